//! Where threads run: shards pinned to CPUs inside the process's allowed set, helper threads (storage, styler
//! HTTP, password hashing) kept off shard CPUs when there are spare ones.
//!
//! A pinned shard owns its CPU: it assumes nothing else runs there. When the process is given fewer CPUs than it
//! runs busy threads (a shared 2-core box, a container with a small cpuset), a pinned shard competes with its
//! neighbours and cannot move away, so its queues grow; the core then sheds messages that waited longer than
//! `SUBMIT_AGE_MS_MAX` with try-again instead of building seconds of queue. With spare CPUs, helpers go there.

use std::collections::BTreeSet;

/// Which CPUs shards and helpers use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// CPU of shard `i`.
    pub shard_cpus: Vec<usize>,
    /// CPUs for helper threads; empty means "share the shard CPUs" (no spare CPU).
    pub helper_cpus: Vec<usize>,
}

/// Errors in `--cpus` / `--shards`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("--cpus names CPU {0}, which this process may not run on (allowed: {1})")]
    NotAllowed(usize, String),
    #[error("no CPU is available")]
    NoCpu,
    #[error("invalid --cpus list {0:?}: use numbers and ranges, e.g. 0,2-3")]
    BadList(String),
}

/// Parses a CPU list such as `0,2-3`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, PlacementError> {
    let bad = || PlacementError::BadList(text.to_string());
    let mut cpus = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => {
                cpus.insert(part.parse().map_err(|_| bad())?);
            }
        }
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    Ok(cpus.into_iter().collect())
}

/// Plans placement from the allowed CPUs, the `--cpus` choice (shard CPUs; empty: all allowed) and `--shards`
/// (0: one per chosen CPU). More shards than chosen CPUs wrap around them.
pub fn plan(allowed: &[usize], chosen: &[usize], shards: usize) -> Result<Plan, PlacementError> {
    if allowed.is_empty() {
        return Err(PlacementError::NoCpu);
    }
    let list = || {
        allowed
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    for &cpu in chosen {
        if !allowed.contains(&cpu) {
            return Err(PlacementError::NotAllowed(cpu, list()));
        }
    }
    let pool: Vec<usize> = if chosen.is_empty() {
        allowed.to_vec()
    } else {
        chosen.to_vec()
    };
    let count = if shards == 0 { pool.len() } else { shards };
    let shard_cpus: Vec<usize> = (0..count).map(|i| pool[i % pool.len()]).collect();
    let helper_cpus = allowed
        .iter()
        .copied()
        .filter(|cpu| !shard_cpus.contains(cpu))
        .collect();
    Ok(Plan {
        shard_cpus,
        helper_cpus,
    })
}

/// The CPUs this process may run on (`sched_getaffinity`), e.g. as restricted by `taskset` or a cpuset.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and the size passed is its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Restricts the calling thread (and threads it starts later) to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as above; CPU_SET only writes inside the set for cpu < CPU_SETSIZE, which is checked.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_stay_inside_the_allowed_set() {
        // `taskset -c 1` with one shard: the shard goes to CPU 1, not CPU 0.
        assert_eq!(
            plan(&[1], &[], 1).unwrap(),
            Plan {
                shard_cpus: vec![1],
                helper_cpus: vec![]
            }
        );
        // A cpuset of 2,3,5 with the default shard count.
        assert_eq!(plan(&[2, 3, 5], &[], 0).unwrap().shard_cpus, vec![2, 3, 5]);
        // Chosen CPUs leave the rest to helpers.
        let p = plan(&[0, 1, 2, 3], &[0, 1], 0).unwrap();
        assert_eq!(p.shard_cpus, vec![0, 1]);
        assert_eq!(p.helper_cpus, vec![2, 3]);
        // More shards than CPUs wrap around.
        assert_eq!(plan(&[4, 6], &[], 3).unwrap().shard_cpus, vec![4, 6, 4]);
        // A chosen CPU outside the set is an error, not a silent pin elsewhere.
        assert_eq!(
            plan(&[0, 1], &[3], 0),
            Err(PlacementError::NotAllowed(3, "0,1".into()))
        );
        assert_eq!(plan(&[], &[], 0), Err(PlacementError::NoCpu));
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0,2-4, 7").unwrap(), vec![0, 2, 3, 4, 7]);
        for bad in ["", "a", "3-1", "1-", ",", "0-999999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn this_process_has_cpus() {
        assert!(!allowed_cpus().is_empty());
    }
}
