//! Loaded modules: content-addressed, compiled once, cached on disk, with their manifest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ferry_abi::ModuleId;
use ferry_abi::abi::{self, ABI_SECTION, ABI_VERSION};
use ferry_abi::manifest::FunctionSig;
use wasmtime::{InstancePre, Linker, Module, Store, UpdateDeadline};

use crate::error::ModuleError;
use crate::ids::module_id;
use crate::wasm::engine::{TimeLimitExceeded, WasmEngine};
use crate::wasm::host::{IMPORTS, TaskState};

/// A module ready to run.
pub struct LoadedModule {
    /// Its id (the BLAKE3 hash of its bytes).
    pub id: ModuleId,
    /// Pre-linked for fast instantiation.
    pub pre: InstancePre<TaskState>,
    /// Its functions, by name.
    pub functions: BTreeMap<String, FunctionSig>,
    /// Its Wasm bytes, to ship to other nodes.
    pub wasm: Arc<[u8]>,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("id", &self.id)
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How modules were obtained, for observability and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModuleStats {
    /// Modules loaded in memory.
    pub loaded: u64,
    /// Compilations performed (cache misses).
    pub compiled: u64,
    /// Modules loaded from the disk cache instead of compiling.
    pub from_disk_cache: u64,
}

/// Most functions (signature exports) one module may have.
pub const MAX_FUNCTIONS: usize = 4096;

/// Most bytes one function's encoded signature may take.
pub const MAX_SIGNATURE: usize = 1 << 20;

/// The modules of one node.
pub struct ModuleRegistry {
    engine: Arc<WasmEngine>,
    linker: Linker<TaskState>,
    modules: RwLock<HashMap<ModuleId, Arc<LoadedModule>>>,
    /// Loads in progress, one lock per module: a second load of the same bytes waits for the
    /// first (and compiles nothing), loads of other modules go on meanwhile.
    loading: std::sync::Mutex<HashMap<ModuleId, Arc<tokio::sync::Mutex<()>>>>,
    cache_dir: Option<PathBuf>,
    compiled: AtomicU64,
    from_disk: AtomicU64,
}

impl std::fmt::Debug for ModuleRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleRegistry")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ModuleRegistry {
    /// A registry compiling with `engine`, caching compiled code in `cache_dir`.
    pub fn new(engine: Arc<WasmEngine>, cache_dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        let linker = crate::wasm::host::linker(engine.engine())?;
        Ok(Self {
            engine,
            linker,
            modules: RwLock::new(HashMap::new()),
            loading: std::sync::Mutex::new(HashMap::new()),
            cache_dir,
            compiled: AtomicU64::new(0),
            from_disk: AtomicU64::new(0),
        })
    }

    /// A loaded module.
    pub fn get(&self, id: &ModuleId) -> Option<Arc<LoadedModule>> {
        self.modules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The registry's figures.
    pub fn stats(&self) -> ModuleStats {
        ModuleStats {
            loaded: self.modules.read().unwrap_or_else(|e| e.into_inner()).len() as u64,
            compiled: self.compiled.load(Ordering::Relaxed),
            from_disk_cache: self.from_disk.load(Ordering::Relaxed),
        }
    }

    /// Loads the module in `wasm`: finds it if loaded, else compiles it (or reads its
    /// compiled code from the disk cache) and reads its manifest by calling its signature
    /// exports in a sandboxed instance with no cluster access (at most [`MAX_FUNCTIONS`] of
    /// them, [`MAX_SIGNATURE`] bytes each, `time_limit` for all together). Loads of the same
    /// bytes are serialized, so they compile once; loads of other modules do not wait.
    pub async fn load(
        &self,
        wasm: &[u8],
        time_limit: std::time::Duration,
        memory_limit: u64,
    ) -> Result<Arc<LoadedModule>, ModuleError> {
        let id = module_id(wasm);
        if let Some(m) = self.get(&id) {
            return Ok(m);
        }
        let lock = self
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let loaded = {
            let _guard = lock.lock().await;
            match self.get(&id) {
                Some(m) => Ok(m),
                None => self.load_new(id, wasm, time_limit, memory_limit).await,
            }
        };
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if loading.get(&id).is_some_and(|l| Arc::ptr_eq(l, &lock)) && Arc::strong_count(&lock) == 2
        {
            loading.remove(&id);
        }
        loaded
    }

    /// Loads a module that is not loaded yet (the caller holds its lock).
    async fn load_new(
        &self,
        id: ModuleId,
        wasm: &[u8],
        time_limit: std::time::Duration,
        memory_limit: u64,
    ) -> Result<Arc<LoadedModule>, ModuleError> {
        check_abi_section(wasm)?;
        // Compiling takes a while; let the runtime move other tasks off this worker.
        let module = tokio::task::block_in_place(|| self.compile(id, wasm))?;
        for import in module.imports() {
            if import.module() != abi::IMPORT_MODULE || !IMPORTS.contains(&import.name()) {
                return Err(ModuleError::UnknownImport {
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                });
            }
        }
        for required in [abi::EXPORT_MEMORY, abi::EXPORT_ALLOC] {
            if module.get_export(required).is_none() {
                return Err(ModuleError::Invalid(format!(
                    "the module does not export `{required}`"
                )));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        let mut loaded = LoadedModule {
            id,
            pre,
            functions: BTreeMap::new(),
            wasm: wasm.into(),
        };
        let sig_names: Vec<String> = module
            .exports()
            .filter_map(|e| {
                e.name()
                    .strip_prefix(abi::EXPORT_SIG_PREFIX)
                    .map(str::to_owned)
            })
            .collect();
        if sig_names.len() > MAX_FUNCTIONS {
            return Err(ModuleError::Invalid(format!(
                "the module exports {} functions, more than the {MAX_FUNCTIONS} a module may have",
                sig_names.len()
            )));
        }
        // One time limit for all the signatures together, not one each.
        let deadline = std::time::Instant::now() + time_limit;
        for name in sig_names {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ModuleError::Manifest {
                    function: name,
                    reason: format!(
                        "reading the module's signatures took longer than the time limit of \
                         {time_limit:?} they share"
                    ),
                });
            }
            if module
                .get_export(&format!("{}{name}", abi::EXPORT_FN_PREFIX))
                .is_none()
            {
                return Err(ModuleError::Manifest {
                    function: name,
                    reason: "the module has a signature but no function export".into(),
                });
            }
            let sig = read_signature(&loaded, &name, left, memory_limit).await?;
            loaded.functions.insert(name, sig);
        }
        let loaded = Arc::new(loaded);
        self.modules
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, loaded.clone());
        Ok(loaded)
    }

    fn cache_path(&self, id: ModuleId) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{id}-{:016x}.cwasm", self.engine.fingerprint())))
    }

    fn compile(&self, id: ModuleId, wasm: &[u8]) -> Result<Module, ModuleError> {
        let engine = self.engine.engine();
        if let Some(path) = self.cache_path(id)
            && let Some(bytes) = read_private(&path)
        {
            // SAFETY: `read_private` returned the bytes of a regular file (not a link) owned by
            // this user, writable by no one else, in a directory with the same properties: a
            // `Module::serialize` artefact this code wrote (atomically, by rename), named by the
            // hash of the Wasm bytes and the engine's fingerprint. The bytes were copied into
            // memory, so the file changing later cannot affect them, and wasmtime checks their
            // header, version and engine settings before using them.
            match unsafe { Module::deserialize(engine, &bytes) } {
                Ok(m) => {
                    self.from_disk.fetch_add(1, Ordering::Relaxed);
                    return Ok(m);
                }
                Err(e) => {
                    tracing::warn!("ignoring unusable cached module {}: {e}", path.display());
                }
            }
        }
        let module =
            Module::new(engine, wasm).map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Some(path) = self.cache_path(id)
            && let Err(e) = write_cache(&path, &module)
        {
            tracing::warn!(
                "could not cache the compiled module in {}: {e}",
                path.display()
            );
        }
        Ok(module)
    }
}

/// Whether `meta` belongs to this user and no one else can write to it.
fn is_private(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    meta.uid() == me && meta.mode() & 0o022 == 0
}

/// The contents of a cached artefact, if it and its directory are private to this user (so
/// no one else could have planted native code there). Links are not followed.
fn read_private(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent()?;
    let dir_meta = std::fs::symlink_metadata(dir).ok()?;
    if !dir_meta.is_dir() || !is_private(&dir_meta) {
        tracing::warn!(
            "not using the module cache in {}: it must be a directory owned by this user and \
             writable by no one else",
            dir.display()
        );
        return None;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || !is_private(&meta) {
        tracing::warn!("not using {}: not a private regular file", path.display());
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn write_cache(path: &Path, module: &Module) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let dir_meta = std::fs::symlink_metadata(dir)?;
    if !dir_meta.is_dir() || !is_private(&dir_meta) {
        return Err(std::io::Error::other(
            "the cache directory must be owned by this user and writable by no one else",
        ));
    }
    let bytes = module
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".tmp-{:016x}", crate::ids::random_u64()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

use std::os::unix::fs::DirBuilderExt;

/// Checks the `ferry_abi` custom section: present, and every copy of it says [`ABI_VERSION`].
fn check_abi_section(wasm: &[u8]) -> Result<(), ModuleError> {
    use wasmtime::wasmparser::{Parser, Payload};
    let mut found = None;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| ModuleError::Invalid(e.to_string()))?;
        if let Payload::CustomSection(c) = payload
            && c.name() == ABI_SECTION
        {
            for chunk in c.data().chunks(4) {
                let v = match <[u8; 4]>::try_from(chunk) {
                    Ok(b) => u32::from_le_bytes(b),
                    Err(_) => {
                        return Err(ModuleError::Invalid("malformed ferry_abi section".into()));
                    }
                };
                if v != ABI_VERSION {
                    return Err(ModuleError::AbiVersion {
                        found: v,
                        expected: ABI_VERSION,
                    });
                }
                found = Some(v);
            }
        }
    }
    match found {
        Some(_) => Ok(()),
        None => Err(ModuleError::NotFerry),
    }
}

async fn read_signature(
    module: &LoadedModule,
    name: &str,
    time_limit: std::time::Duration,
    memory_limit: u64,
) -> Result<FunctionSig, ModuleError> {
    let fail = |reason: String| ModuleError::Manifest {
        function: name.to_owned(),
        reason,
    };
    let state = TaskState::new(None, module.id, name, time_limit, memory_limit);
    let mut store = new_store(module, state);
    let instance = module
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| fail(format!("{e:#}")))?;
    let memory = instance.get_memory(&mut store, abi::EXPORT_MEMORY);
    store.data_mut().memory = memory;
    let sig_fn = instance
        .get_typed_func::<(), i32>(&mut store, &format!("{}{name}", abi::EXPORT_SIG_PREFIX))
        .map_err(|e| fail(format!("{e:#}")))?;
    sig_fn
        .call_async(&mut store, ())
        .await
        .map_err(|e| fail(format!("{e:#}")))?;
    let bytes = store
        .into_data()
        .raw_result
        .ok_or_else(|| fail("the signature function returned nothing".into()))?;
    if bytes.len() > MAX_SIGNATURE {
        return Err(fail(format!(
            "its signature takes {} bytes, more than the limit of {MAX_SIGNATURE}",
            bytes.len()
        )));
    }
    let sig: FunctionSig =
        postcard::from_bytes(&bytes).map_err(|e| fail(format!("undecodable signature: {e}")))?;
    if sig.name != name {
        return Err(fail(format!("the signature names `{}`", sig.name)));
    }
    Ok(sig)
}

/// A store with the limits and the epoch callback installed.
pub(crate) fn new_store(module: &LoadedModule, state: TaskState) -> Store<TaskState> {
    let mut store = Store::new(module.pre.module().engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        if state.charge_time() {
            return Err(wasmtime::Error::new(TimeLimitExceeded));
        }
        // Let other tasks run; the clock restarts when this guest is scheduled again.
        let clock = state.clock.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                tokio::task::yield_now().await;
                clock.resume();
            }),
        ))
    });
    store
}
