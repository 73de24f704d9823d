//! Random workloads: puts, calls with refs at the top level and inside values, gets, drops,
//! crashes and restarts, partitions and a hostile peer, all drawn from the run's seed.

use std::time::Duration;

use ferry_abi::abi::CallArg;

use super::{Failed, Faults, Shape, Sim};

/// What a random run may do.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Workload operations.
    pub ops: usize,
    /// Whether nodes crash (and restart).
    pub crashes: bool,
    /// Whether the network partitions.
    pub partitions: bool,
}

/// What a run did, for the test's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Gets that returned the value.
    pub gets_ok: u64,
    /// Gets that returned a typed error.
    pub gets_failed: u64,
    /// Messages the cores refused.
    pub refused: u64,
    /// Deaths the head declared.
    pub deaths: u64,
    /// Simulated time.
    pub elapsed: Duration,
}

/// Runs one random workload from `seed`, checking the invariants throughout.
pub fn run(seed: u64, shape: Shape, faults: Faults, plan: Plan) -> Result<Summary, Failed> {
    let mut sim = Sim::new(seed, shape, faults);
    // Let everyone join.
    sim.run_for(Duration::from_millis(300))?;
    let people = shape.workers + shape.drivers;
    for _ in 0..plan.ops {
        let wait = Duration::from_millis(sim.rng.below(25));
        sim.run_for(wait)?;
        let slot = sim.rng.below(people as u64) as usize;
        if sim.node(slot).is_none() {
            if plan.crashes && sim.rng.chance(100) {
                sim.restart(slot);
            }
            continue;
        }
        let handles = sim.handles(slot);
        let pick = |sim: &mut Sim| -> Option<ferry_abi::ObjectId> {
            (!handles.is_empty()).then(|| handles[sim.rng.below(handles.len() as u64) as usize])
        };
        match sim.rng.below(100) {
            0..=19 => {
                let mut contained = Vec::new();
                for _ in 0..sim.rng.below(3) {
                    contained.extend(pick(&mut sim));
                }
                contained.sort();
                contained.dedup();
                let len = if sim.rng.chance(300) { 4 << 20 } else { 64 };
                sim.put(slot, len, &contained)?;
            }
            20..=49 => {
                let mut args = Vec::new();
                for _ in 0..sim.rng.below(4) {
                    match (sim.rng.chance(500), pick(&mut sim)) {
                        (true, Some(id)) => args.push(CallArg::Object(id)),
                        (false, Some(id)) => args.push(CallArg::Value {
                            bytes: vec![1, 2, 3],
                            refs: vec![id],
                        }),
                        (_, None) => args.push(CallArg::Value {
                            bytes: vec![4],
                            refs: Vec::new(),
                        }),
                    }
                }
                let _ = sim.call(slot, args)?;
            }
            50..=69 => {
                if let Some(id) = pick(&mut sim) {
                    sim.get(slot, id)?;
                }
            }
            70..=89 => {
                if let Some(id) = pick(&mut sim) {
                    sim.drop_ref(slot, id)?;
                }
            }
            90..=93 => sim.attack()?,
            94..=95 if plan.crashes && slot != 0 => sim.crash(slot),
            96..=97 if plan.partitions => {
                let other = sim.rng.below(people as u64) as usize;
                sim.cut(slot, other);
            }
            98..=99 if plan.partitions => sim.heal(),
            _ => {}
        }
    }
    sim.finish()?;
    let mut s = Summary {
        refused: sim.refused.values().sum(),
        deaths: sim.deaths.len() as u64,
        elapsed: sim.elapsed(),
        ..Summary::default()
    };
    for g in sim.gets.values() {
        match g.result {
            Some(Ok(())) => s.gets_ok += 1,
            Some(Err(_)) => s.gets_failed += 1,
            None => {}
        }
    }
    Ok(s)
}
