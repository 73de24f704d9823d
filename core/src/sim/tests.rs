//! Simulator tests: scenarios for each cross-node behaviour, then random workloads over many
//! seeds. `FERRY_SIM_SEEDS=N` runs N seeds instead of the default; `FERRY_SIM_SEED=S` runs
//! only seed S (what a failure prints).

use std::time::Duration;

use ferry_abi::abi::CallArg;

use super::workload::{self, Plan};
use super::*;

fn cluster(workers: usize, drivers: usize) -> Sim {
    let mut sim = Sim::new(
        1,
        Shape {
            workers,
            drivers,
            hostile: false,
        },
        Faults::none(),
    );
    sim.run_for(Duration::from_millis(300)).unwrap();
    sim
}

fn ok(sim: &Sim, g: u64) -> bool {
    matches!(sim.gets[&g].result, Some(Ok(())))
}

fn result(sim: &Sim, g: u64) -> Option<Result<(), Failure>> {
    sim.gets[&g].result.clone()
}

fn run(sim: &mut Sim, ms: u64) {
    if let Err(f) = sim.run_for(Duration::from_millis(ms)) {
        panic!("{f}");
    }
}

#[test]
fn every_node_joins_and_sees_the_others() {
    let sim = cluster(3, 1);
    for slot in 0..4 {
        let members = sim.node(slot).unwrap().core.members();
        assert_eq!(members.len(), 4, "{members:?}");
        assert!(members.iter().all(|m| m.alive));
    }
    // The driver is a member but not a worker.
    let head = sim.node(0).unwrap().core.members();
    assert_eq!(head.iter().filter(|m| m.info.worker).count(), 3);
}

#[test]
fn a_driver_call_runs_on_a_worker_and_its_result_comes_back() {
    let mut sim = cluster(2, 1);
    let x = sim.put(2, 64, &[]).unwrap();
    let mut results = Vec::new();
    for _ in 0..20 {
        results.push(sim.call(2, vec![CallArg::Object(x)]).unwrap().unwrap());
    }
    run(&mut sim, 500);
    let gets: Vec<u64> = results.iter().map(|r| sim.get(2, *r).unwrap()).collect();
    run(&mut sim, 500);
    // A few stand-in tasks panic; the rest return their value, inline or held.
    let done = gets.iter().filter(|g| sim.gets[g].result.is_some()).count();
    assert_eq!(done, 20);
    assert!(gets.iter().filter(|g| ok(&sim, **g)).count() >= 15);
    // Both workers ran calls (the driver runs none).
    let ran: Vec<u64> = (0..2)
        .map(|s| sim.node(s).unwrap().core.tasks().counts().0 as u64)
        .collect();
    assert_eq!(ran, vec![0, 0], "nothing left running");
    sim.finish().unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn nested_refs_cross_three_nodes_and_stay_alive_while_referenced() {
    let mut sim = cluster(3, 1);
    // The driver puts an inner object and an outer one holding it, passes the outer one
    // inside a value to a call, and drops its own refs: the call's references keep both.
    let inner = sim.put(3, 64, &[]).unwrap();
    let outer = sim.put(3, 4 << 20, &[inner]).unwrap();
    let r = sim
        .call(
            3,
            vec![
                CallArg::Value {
                    bytes: vec![1],
                    refs: vec![outer],
                },
                CallArg::Object(outer),
            ],
        )
        .unwrap()
        .unwrap();
    sim.drop_ref(3, inner).unwrap();
    sim.drop_ref(3, outer).unwrap();
    run(&mut sim, 1000);
    let g = sim.get(3, r).unwrap();
    run(&mut sim, 1000);
    assert!(sim.gets[&g].result.is_some());
    sim.finish().unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn an_outer_object_freed_right_after_reading_keeps_its_inner_ref_alive() {
    // The case that needed a 300 ms sleep with real processes: a reader gets an outer object
    // holding a ref to an object owned by a third node, then drops the outer one at once.
    // Its release of the outer object goes only after its borrow of the inner one is
    // acknowledged, so the inner object outlives the outer one. Checked after every step.
    for seed in 0..50 {
        let mut sim = Sim::new(
            seed,
            Shape {
                workers: 3,
                drivers: 1,
                hostile: false,
            },
            Faults::rough(),
        );
        run(&mut sim, 300);
        let inner = sim.put(1, 64, &[]).unwrap();
        let outer = sim.put(1, 64, &[inner]).unwrap();
        // Node 1 hands the outer object to a call from the driver... modelled directly: the
        // driver borrows the outer object through a call result that holds it.
        let r = sim
            .call(
                1,
                vec![CallArg::Value {
                    bytes: vec![0],
                    refs: vec![outer],
                }],
            )
            .unwrap()
            .unwrap();
        sim.drop_ref(1, inner).unwrap();
        sim.drop_ref(1, outer).unwrap();
        run(&mut sim, 200);
        let g = sim.get(1, r).unwrap();
        run(&mut sim, 400);
        if let Some(Ok(())) = result(&sim, g) {
            // Whatever the result held is now the reader's; drop the result at once.
            sim.drop_ref(1, r).unwrap();
            for h in sim.handles(1) {
                let g2 = sim.get(1, h).unwrap();
                run(&mut sim, 400);
                assert!(result(&sim, g2).is_some());
            }
        }
        sim.finish().unwrap_or_else(|f| panic!("{f}"));
    }
}

#[test]
fn a_killed_node_fails_its_calls_and_the_objects_only_it_held_naming_it() {
    let mut sim = cluster(3, 1);
    let mut results = Vec::new();
    for _ in 0..12 {
        results.push(sim.call(3, vec![]).unwrap().unwrap());
    }
    sim.crash(2);
    let dead = sim.id(2);
    run(&mut sim, 3000);
    let gets: Vec<u64> = results.iter().map(|r| sim.get(3, *r).unwrap()).collect();
    run(&mut sim, 1000);
    let mut named = 0;
    for g in &gets {
        match result(&sim, *g) {
            Some(Err(Failure::NodeDied { node, .. })) => {
                assert_eq!(node, dead);
                named += 1;
            }
            Some(_) => {}
            None => panic!("a get never ended"),
        }
    }
    assert!(named > 0, "some calls were placed on the killed node");
    assert!(sim.deaths.contains(&dead));
    // The others keep serving.
    let r = sim.call(3, vec![]).unwrap().unwrap();
    run(&mut sim, 500);
    let g = sim.get(3, r).unwrap();
    run(&mut sim, 500);
    assert!(result(&sim, g).is_some());
    sim.finish().unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn an_owner_dying_while_others_borrow_fails_their_reads_and_frees_what_they_held() {
    let mut sim = cluster(3, 0);
    // Node 1 owns x; node 2 borrows it through a call result that holds it.
    let x = sim.put(1, 64, &[]).unwrap();
    let y = sim.put(2, 64, &[]).unwrap();
    let r = sim
        .call(
            2,
            vec![CallArg::Value {
                bytes: vec![],
                refs: vec![y],
            }],
        )
        .unwrap()
        .unwrap();
    let _ = r;
    let z = sim
        .call(
            1,
            vec![CallArg::Value {
                bytes: vec![],
                refs: vec![x],
            }],
        )
        .unwrap()
        .unwrap();
    run(&mut sim, 500);
    sim.crash(1);
    run(&mut sim, 3000);
    let _ = z;
    // Whoever still holds refs to node 1's objects sees them fail, naming node 1.
    for slot in [0, 2] {
        for (id, e) in sim.node(slot).unwrap().table.entries() {
            if id.owner() == sim.id(1).0 {
                assert!(
                    matches!(e.state, State::Failed(Failure::NodeDied { .. })),
                    "{e:?}"
                );
            }
        }
    }
    sim.finish().unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn a_free_copy_for_a_dead_holder_changes_nothing() {
    let mut sim = cluster(2, 1);
    let r = sim.call(2, vec![]).unwrap().unwrap();
    run(&mut sim, 500);
    // Whatever node ran it dies; then the driver frees the result.
    sim.crash(1);
    run(&mut sim, 3000);
    sim.drop_ref(2, r).unwrap();
    run(&mut sim, 500);
    sim.finish().unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn forged_messages_from_a_client_certificate_change_nothing() {
    let mut sim = Sim::new(
        7,
        Shape {
            workers: 3,
            drivers: 1,
            hostile: true,
        },
        Faults::none(),
    );
    run(&mut sim, 300);
    let x = sim.put(1, 64, &[]).unwrap();
    let r = sim.call(3, vec![]).unwrap().unwrap();
    for _ in 0..200 {
        sim.attack().unwrap_or_else(|f| panic!("{f}"));
        run(&mut sim, 5);
    }
    run(&mut sim, 500);
    // Nobody was declared dead, nothing was freed early (checked after every step), and every
    // forged message was refused.
    assert!(sim.deaths.is_empty(), "{:?}", sim.deaths);
    assert!(
        sim.refused.values().sum::<u64>() >= 150,
        "{:?}",
        sim.refused
    );
    let g = sim.get(1, x).unwrap();
    let g2 = sim.get(3, r).unwrap();
    run(&mut sim, 500);
    assert!(ok(&sim, g));
    assert!(result(&sim, g2).is_some());
    sim.finish().unwrap_or_else(|f| panic!("{f}"));
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("FERRY_SIM_SEED") {
        return vec![s.parse().expect("FERRY_SIM_SEED is a number")];
    }
    let n = std::env::var("FERRY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

fn many(default: u64, shape: Shape, faults: Faults, plan: Plan) {
    let mut total = workload::Summary::default();
    let list = seeds(default);
    for &seed in &list {
        match workload::run(seed, shape, faults, plan) {
            Ok(s) => {
                total.gets_ok += s.gets_ok;
                total.gets_failed += s.gets_failed;
                total.refused += s.refused;
                total.deaths += s.deaths;
                total.elapsed += s.elapsed;
            }
            Err(f) => panic!("{f}"),
        }
    }
    eprintln!("{} seeds: {total:?}", list.len());
    assert!(total.gets_ok > 0);
}

#[test]
fn random_workloads_keep_the_invariants() {
    let shape = Shape {
        workers: 3,
        drivers: 2,
        hostile: true,
    };
    let plan = Plan {
        ops: 150,
        crashes: false,
        partitions: false,
    };
    many(300, shape, Faults::rough(), plan);
}

#[test]
fn random_workloads_with_crashes_and_partitions_keep_the_invariants() {
    let shape = Shape {
        workers: 4,
        drivers: 2,
        hostile: true,
    };
    let plan = Plan {
        ops: 200,
        crashes: true,
        partitions: true,
    };
    many(700, shape, Faults::rough(), plan);
}

/// Seeds that found bugs, kept (`many` runs seeds 0..N, and these may lie beyond it).
#[test]
fn seeds_that_found_bugs_stay_fixed() {
    let calm = (
        Shape {
            workers: 3,
            drivers: 2,
            hostile: true,
        },
        Plan {
            ops: 150,
            crashes: false,
            partitions: false,
        },
    );
    let rough = (
        Shape {
            workers: 4,
            drivers: 2,
            hostile: true,
        },
        Plan {
            ops: 200,
            crashes: true,
            partitions: true,
        },
    );
    // 1, 78: a new reference to an object held here only as a copy kept for its owner
    //        registered no borrow, and the owner freed it while it was still referenced.
    // 1 (rough): a Release and a Borrow of one object in one batch freed it under the
    //        borrower (the give-back was applied before the new hold).
    // 268: a lost owner's object was marked failed while a call here was computing it.
    // 981: a driver declared dead while cut off never learnt it, and its gets hung.
    for (seed, (shape, plan)) in [
        (1, calm),
        (78, calm),
        (1, rough),
        (268, rough),
        (552, rough),
        (981, rough),
    ] {
        if let Err(f) = workload::run(seed, shape, Faults::rough(), plan) {
            panic!("{f}");
        }
    }
}
