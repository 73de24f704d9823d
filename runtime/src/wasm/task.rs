//! Running one task: resolve its arguments, run the function in a fresh pooled instance
//! under the time and memory limits, and turn whatever happened into a result or a
//! [`TaskError`].

use std::sync::Arc;

use ferry_abi::ObjectId;
use ferry_abi::abi::{self, CallArg, fail_kind};
use wasmtime::{Store, Trap};

use crate::error::{GetError, TaskError, TaskErrorKind};
use crate::ids::NodeId;
use crate::node::NodeInner;
use crate::objects::Completed;
use crate::store::Sealed;
use crate::wasm::engine::{MemoryLimitExceeded, TimeLimitExceeded};
use crate::wasm::host::{GuestFailure, HOST_FAILURE, TaskState};
use crate::wasm::module::{LoadedModule, new_store};

/// Everything needed to run (and, later, to re-run) a call: Ray's task spec, kept as lineage.
/// The distributed core's type: the same spec travels in a `Run`.
pub use ferry_core::TaskSpec;

/// Runs `spec` on `node` to completion and records the outcome in the object table.
pub async fn run_task(node: Arc<NodeInner>, spec: TaskSpec) {
    // If this future is dropped before it finishes (the node shuts down, or something
    // panicked), the guard still completes the result, so nobody waits on it forever.
    let mut guard = Completion::new(
        &node,
        &spec,
        node.id,
        "the task was abandoned before it finished (the node is shutting down)",
    );
    let mut granted = Vec::new();
    let mut slot = None;
    let outcome = execute(&node, &spec, &mut granted, &mut slot).await;
    let outcome = match outcome {
        Ok((sealed, contained)) => Ok((Completed::Local(sealed), contained)),
        Err(kind) => {
            let err = TaskError {
                function: spec.function.clone(),
                node: node.id,
                kind,
            };
            tracing::debug!(target: "ferry::task", "{err}");
            Err(Arc::new(err))
        }
    };
    // The result retains the refs it contains before the guest's grants, the task's argument
    // refs and its count on the result go (so objects the guest made and returned survive),
    // and the outcome becomes visible in the same step.
    granted.extend(spec.held_refs());
    node.objects.complete(spec.result, outcome, &granted);
    guard.done = true;
    // The instance slot is given back only now, so a parent woken by this result is never
    // counted as stuck while its child's slot changes hands.
    drop(slot);
}

/// Completes a task's result with an error if the task never got to complete it (its future
/// was dropped: the node is shutting down, or something panicked), so nobody waits forever.
pub(crate) struct Completion<'a> {
    node: &'a NodeInner,
    spec: &'a TaskSpec,
    /// The node the task ran on (named in the error).
    ran_on: NodeId,
    detail: &'static str,
    /// Set once the outcome is recorded.
    pub(crate) done: bool,
}

impl<'a> Completion<'a> {
    /// A guard for `spec`'s result, failing it with `detail` if dropped before `done`.
    pub(crate) fn new(
        node: &'a NodeInner,
        spec: &'a TaskSpec,
        ran_on: NodeId,
        detail: &'static str,
    ) -> Self {
        Self {
            node,
            spec,
            ran_on,
            detail,
            done: false,
        }
    }
}

impl Drop for Completion<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let err = TaskError {
            function: self.spec.function.clone(),
            node: self.ran_on,
            kind: TaskErrorKind::Host {
                detail: self.detail.into(),
            },
        };
        self.node
            .objects
            .complete(self.spec.result, Err(Arc::new(err)), &self.spec.held_refs());
    }
}

type Outcome = Result<(Arc<Sealed>, Vec<ObjectId>), TaskErrorKind>;

/// Runs the task; `granted` receives the refs the guest held and `slot` the instance slot,
/// for the caller to release once the outcome is recorded.
async fn execute<'a>(
    node: &'a Arc<NodeInner>,
    spec: &TaskSpec,
    granted: &mut Vec<ObjectId>,
    slot: &mut Option<tokio::sync::SemaphorePermit<'a>>,
) -> Outcome {
    // 1. Top-level refs become values: wait for each and splice its metadata into the argument
    //    buffer. postcard encodes a tuple as its fields one after another, so the buffer is
    //    the encoding of the whole parameter tuple. An argument's out-of-band buffers stay in
    //    the store; the guest reads them by argument position (`buffer(k, i)`).
    //    Checked first: the function exists and takes this many arguments (a call from a
    //    peer was never checked against the signature), and the arguments together fit in
    //    the guest's memory, before any of them is copied (one large object named a
    //    thousand times must not make the host allocate a thousand copies).
    let Some(module) = node.modules.get(&spec.module) else {
        return Err(TaskErrorKind::Host {
            detail: format!("module {} is not loaded on this node", spec.module),
        });
    };
    let Some(sig) = module.functions.get(&spec.function) else {
        return Err(TaskErrorKind::UnknownFunction {
            module: spec.module,
        });
    };
    if sig.params.len() != spec.args.len() {
        return Err(TaskErrorKind::BadArguments {
            detail: format!(
                "{} arguments for {} parameters ({})",
                spec.args.len(),
                sig.params.len(),
                sig.display_signature()
            ),
        });
    }
    let limit = node.config.memory_limit;
    let too_large = |total: u64| TaskErrorKind::BadArguments {
        detail: format!(
            "the arguments' in-band parts take {total} bytes or more, over the guest's memory \
             limit of {limit} bytes; pass large values as Blob or Buffer"
        ),
    };
    let mut total: u64 = spec
        .args
        .iter()
        .map(|a| match a {
            CallArg::Value { bytes, .. } => bytes.len() as u64,
            CallArg::Object(_) => 0,
        })
        .fold(0, u64::saturating_add);
    if total > limit {
        return Err(too_large(total));
    }
    let mut args = Vec::new();
    let mut grants = Vec::new();
    let mut arg_objects = Vec::with_capacity(spec.args.len());
    for (i, a) in spec.args.iter().enumerate() {
        match a {
            CallArg::Value { bytes, refs } => {
                args.extend_from_slice(bytes);
                grants.extend_from_slice(refs);
                arg_objects.push(None);
            }
            CallArg::Object(id) => match node.objects.wait_object(*id, None).await {
                Ok((sealed, contained)) => {
                    total = total.saturating_add(sealed.meta().len() as u64);
                    if total > limit {
                        return Err(too_large(total));
                    }
                    args.extend_from_slice(sealed.meta());
                    grants.extend(contained);
                    arg_objects.push((!sealed.layout().buffers.is_empty()).then_some(sealed));
                }
                Err(GetError::Task(upstream)) => {
                    let root = match &upstream.kind {
                        TaskErrorKind::UpstreamFailed { root, .. } => root.clone(),
                        _ => Arc::new(upstream.clone()),
                    };
                    return Err(TaskErrorKind::UpstreamFailed {
                        argument: i + 1,
                        upstream_function: upstream.function,
                        root,
                    });
                }
                Err(GetError::NodeDied { node, detail, .. }) => {
                    return Err(TaskErrorKind::NodeDied { node, detail });
                }
                Err(_) => {
                    return Err(TaskErrorKind::ArgumentLost {
                        argument: i + 1,
                        id: *id,
                    });
                }
            },
        }
    }

    // 2. A pooled instance slot.
    *slot = Some(acquire_slot(node).await?);

    let mut state = TaskState::new(
        Some(node.clone()),
        spec.module,
        &spec.function,
        node.config.time_limit,
        node.config.memory_limit,
    );
    for g in grants {
        state.grant(&node.objects, g);
    }
    state.arg_objects = arg_objects;
    state.map_threshold = node.config.map_threshold;
    let mut store = new_store(&module, state);
    let outcome = run_in_store(&mut store, &module, &spec.function, &args).await;
    // Buffers mapped into the guest go before its memory returns to the pool. (If this future
    // is dropped instead, dropping the store drops its data, and with it the windows, before
    // its instances.)
    store.data_mut().windows.restore_all();
    let state = store.into_data();
    granted.extend(state.granted.iter().copied());
    let limits = (state.time_limit, state.limiter.limit as u64);
    classify(outcome, state.result, state.failure, limits)
}

/// Waits for an instance slot. If every slot is held by a guest that waits for another task,
/// no queued task could ever start: fail with a clear error instead of hanging.
pub(crate) async fn acquire_slot(
    node: &NodeInner,
) -> Result<tokio::sync::SemaphorePermit<'_>, TaskErrorKind> {
    loop {
        let stalled = node.slots_stalled.notified();
        tokio::pin!(stalled);
        stalled.as_mut().enable();
        if let Ok(p) = node.instance_slots.try_acquire() {
            return Ok(p);
        }
        if node.slots_stalled() {
            return Err(TaskErrorKind::Host {
                detail: format!(
                    "cannot start: all {} guest instances are blocked waiting for other tasks \
                     (nested calls outgrew the instance pool; raise max_instances)",
                    node.config.max_instances
                ),
            });
        }
        tokio::select! {
            p = node.instance_slots.acquire() => {
                return p.map_err(|_| TaskErrorKind::Host {
                    detail: "the node is shutting down".into(),
                });
            }
            () = &mut stalled => {}
        }
    }
}

/// Instantiates the module and calls `__ferry_fn_<function>` with `args`.
pub(crate) async fn run_in_store(
    store: &mut Store<TaskState>,
    module: &LoadedModule,
    function: &str,
    args: &[u8],
) -> wasmtime::Result<i32> {
    let instance = module.pre.instantiate_async(&mut *store).await?;
    let memory = instance
        .get_memory(&mut *store, abi::EXPORT_MEMORY)
        .ok_or_else(|| wasmtime::Error::msg("the module exports no memory"))?;
    store.data_mut().memory = Some(memory);
    let alloc = instance.get_typed_func::<(i32, i32), i32>(&mut *store, abi::EXPORT_ALLOC)?;
    let shim = instance.get_typed_func::<(i32, i32), i32>(
        &mut *store,
        &format!("{}{function}", abi::EXPORT_FN_PREFIX),
    )?;
    let len = i32::try_from(args.len())
        .map_err(|_| wasmtime::Error::msg("the arguments are larger than 2 GiB"))?;
    let ptr = if args.is_empty() {
        0
    } else {
        let ptr = alloc.call_async(&mut *store, (len, 1)).await?;
        if ptr == 0 {
            return Err(wasmtime::Error::msg(
                "the guest could not allocate memory for the arguments",
            ));
        }
        let start = ptr as u32 as usize;
        let dst = memory
            .data_mut(&mut *store)
            .get_mut(start..start + args.len())
            .ok_or_else(|| wasmtime::Error::msg("the guest's allocator returned a bad pointer"))?;
        dst.copy_from_slice(args);
        ptr
    };
    shim.call_async(&mut *store, (ptr, len)).await
}

fn classify(
    outcome: wasmtime::Result<i32>,
    result: Option<(Arc<Sealed>, Vec<ObjectId>)>,
    failure: Option<GuestFailure>,
    (time_limit, memory_limit): (std::time::Duration, u64),
) -> Outcome {
    match outcome {
        // A failure the host recorded (a refused result) stands even if the shim says OK.
        Ok(abi::status::OK) => match (result, failure) {
            (_, Some(f)) if f.kind == HOST_FAILURE => Err(failure_kind(f)),
            (Some(r), _) => Ok(r),
            (None, _) => Err(TaskErrorKind::Abi {
                detail: "the function returned without handing over a result".into(),
            }),
        },
        Ok(code) => match failure {
            Some(f) => Err(failure_kind(f)),
            None => Err(TaskErrorKind::Abi {
                detail: format!("the function returned status {code} without saying why"),
            }),
        },
        Err(e) => {
            if e.downcast_ref::<TimeLimitExceeded>().is_some() {
                return Err(TaskErrorKind::TimedOut { limit: time_limit });
            }
            if e.downcast_ref::<MemoryLimitExceeded>().is_some() {
                return Err(TaskErrorKind::MemoryLimit {
                    limit: memory_limit,
                });
            }
            if let Some(f) = failure
                && f.kind == fail_kind::PANIC
            {
                return Err(failure_kind(f));
            }
            if let Some(trap) = e.downcast_ref::<Trap>() {
                let bt = e
                    .downcast_ref::<wasmtime::WasmBacktrace>()
                    .map(|b| format!("\n{b}"))
                    .unwrap_or_default();
                return Err(TaskErrorKind::Trapped {
                    trap: format!("{trap}{bt}"),
                });
            }
            Err(TaskErrorKind::Host {
                detail: format!("{e:#}"),
            })
        }
    }
}

fn failure_kind(f: GuestFailure) -> TaskErrorKind {
    match f.kind {
        HOST_FAILURE => TaskErrorKind::Host { detail: f.message },
        fail_kind::PANIC => TaskErrorKind::Panicked { message: f.message },
        fail_kind::BAD_ARGUMENTS => TaskErrorKind::BadArguments { detail: f.message },
        _ => TaskErrorKind::Failed {
            message: f.message,
            cause: f.cause,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::config::NodeConfig;

    /// A call from a peer is never checked against the signature before it runs (a driver's
    /// is, at submission): the task itself refuses the wrong number of arguments.
    #[test]
    fn a_call_with_the_wrong_number_of_arguments_is_refused_before_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::embedded_with(NodeConfig::for_tests(dir.path())).unwrap();
        let module = client.load(&ferry_tests::testguest_wasm()).unwrap();
        let node = client.inner().clone();
        let spec = TaskSpec {
            module: module.id(),
            function: "add".into(),
            args: vec![CallArg::Value {
                bytes: vec![2],
                refs: Vec::new(),
            }],
            result: node.ids.next(),
        };
        let result = spec.result;
        node.objects.insert_pending(result, 2);
        let n = node.clone();
        node.block_on(async move { run_task(n, spec).await })
            .unwrap();
        match node.objects.state(result) {
            Some(crate::objects::ObjectState::Failed(e)) => match &e.kind {
                TaskErrorKind::BadArguments { detail } => {
                    assert!(detail.contains("1 arguments for 2 parameters"), "{detail}")
                }
                other => panic!("expected BadArguments, got {other:?}"),
            },
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
