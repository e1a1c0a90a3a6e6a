//! Connections per client address, over every shard: a client may hold at most `connections_per_ip_max` chat
//! and HTTP connections at once.
//!
//! The table is shared by the shards (the kernel spreads one address's connections over all of them), behind a
//! mutex that is taken only when a connection opens or closes, never per message. A slot is held by the
//! connection's task for its whole life, through a WebSocket upgrade, and given back when it is dropped, so the
//! count cannot leak. The table holds only addresses with open connections, so it is bounded by the connection
//! limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per client address.
#[derive(Debug)]
pub struct IpConnections {
    counts: Mutex<HashMap<IpAddr, u32>>,
    per_ip_max: u32,
    exempt_loopback: bool,
}

/// One open connection counted against its address; dropping it gives the place back.
#[derive(Debug)]
pub struct IpSlot {
    table: Option<(Arc<IpConnections>, IpAddr)>,
}

impl IpSlot {
    /// A slot that counts against nothing (an address that could not be read).
    pub fn unlimited() -> IpSlot {
        IpSlot { table: None }
    }
}

impl IpConnections {
    pub fn new(per_ip_max: u32, exempt_loopback: bool) -> Arc<IpConnections> {
        Arc::new(IpConnections {
            counts: Mutex::new(HashMap::new()),
            per_ip_max: per_ip_max.max(1),
            exempt_loopback,
        })
    }

    /// A place for one more connection from `ip`, or `None` when the address already holds the most it may.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.exempt_loopback && ip.is_loopback() {
            return Some(IpSlot { table: None });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.per_ip_max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: Some((self.clone(), ip)),
        })
    }

    /// Open connections from `ip` (for tests and metrics).
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((table, ip)) = self.table.take() {
            table.release(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_places_back() {
        let table = IpConnections::new(2, false);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.8".parse().unwrap();
        let first = table.try_acquire(a).expect("first");
        let second = table.try_acquire(a).expect("second");
        assert!(
            table.try_acquire(a).is_none(),
            "third from the same address"
        );
        assert!(
            table.try_acquire(b).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert_eq!(table.open_from(a), 1);
        let third = table.try_acquire(a).expect("a place was given back");
        drop((second, third));
        assert_eq!(table.open_from(a), 0);
        assert!(
            table.counts.lock().unwrap().is_empty(),
            "no entry outlives its connections"
        );
    }

    #[test]
    fn loopback_is_exempt_only_when_asked() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let strict = IpConnections::new(1, false);
        let _held = strict.try_acquire(local).unwrap();
        assert!(strict.try_acquire(local).is_none());
        let exempt = IpConnections::new(1, true);
        let slots: Vec<_> = (0..10).map(|_| exempt.try_acquire(local)).collect();
        assert!(slots.iter().all(Option::is_some));
        assert_eq!(exempt.open_from(local), 0);
    }
}
