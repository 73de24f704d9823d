//! The baseline: a guest export called straight through wasmtime, with the same
//! engine settings ferry uses (pooling allocator, epoch interruption, async), a fresh
//! instance per call from an `InstancePre`, and host functions that do nothing.

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store,
};

pub struct Direct {
    engine: Engine,
    pre: InstancePre<()>,
    rt: tokio::runtime::Runtime,
}

impl Direct {
    pub fn new(wasm: &[u8]) -> anyhow::Result<Self> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(
                PoolingAllocationConfig::default(),
            ));
        let engine = Engine::new(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
        let module = Module::new(&engine, wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut linker: Linker<()> = Linker::new(&engine);
        for import in module.imports() {
            let ty = import
                .ty()
                .func()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("non-function import"))?;
            linker
                .func_new(import.module(), import.name(), ty, |_, _, results| {
                    for r in results.iter_mut() {
                        *r = match r {
                            wasmtime::Val::I64(_) => wasmtime::Val::I64(0),
                            _ => wasmtime::Val::I32(0),
                        };
                    }
                    Ok(())
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        Ok(Self { engine, pre, rt })
    }

    /// One call of the export of `function` in a fresh instance.
    pub fn call_fresh_instance(&self, function: &str) {
        self.rt.block_on(async {
            let mut store = Store::new(&self.engine, ());
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = self
                .pre
                .instantiate_async(&mut store)
                .await
                .expect("instantiate");
            let f = instance
                .get_typed_func::<(i32, i32), i32>(&mut store, &format!("__ferry_fn_{function}"))
                .expect("export");
            f.call_async(&mut store, (0, 0)).await.expect("call");
        });
    }
}
