//! Mesh address allocation (docs/mesh.md#coordination): each (organization, public key) gets one
//! address of 100.64.0.0/10, never the block's first or last, unique within its organization.
//! The first choice is a hash of the organization and the key, so the same pair lands on the
//! same address even on a fresh store; a taken address moves to the next free one. What was
//! assigned is kept by the caller and handed back with [`Ipam::restore`] at start, so an
//! assignment never changes. Pure: no I/O, no clock; it must never hand out an address twice
//! in one organization.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use citadel_transports::control_plane::mesh_wire::{KEY_LEN, MESH_NET, MESH_PREFIX_LEN};
use sha2::{Digest as _, Sha256};

/// Addresses in the block, the first and last included.
const SIZE: u32 = 1 << (32 - MESH_PREFIX_LEN as u32);
/// Addresses that may be handed out: all but the first and the last.
const USABLE: u32 = SIZE - 2;

type Key = [u8; KEY_LEN];

/// The address at `offset` (1 to [`USABLE`]) of the block.
fn at(offset: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(MESH_NET) + offset)
}

/// The first choice of `(org, key)`: an offset from 1 to [`USABLE`].
fn first_choice(org: &str, key: &Key) -> u32 {
    let mut h = Sha256::new();
    h.update(org.as_bytes());
    h.update([0u8]);
    h.update(key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % USABLE + 1
}

/// Whether `ip` may be handed out: inside the block, not its first or last address.
pub fn usable(ip: Ipv4Addr) -> bool {
    let off = u32::from(ip).wrapping_sub(u32::from(MESH_NET));
    (1..=USABLE).contains(&off)
}

/// The addresses of every organization.
#[derive(Debug, Default, Clone)]
pub struct Ipam {
    by_key: HashMap<(String, Key), Ipv4Addr>,
    used: HashMap<String, HashSet<Ipv4Addr>>,
}

/// Why an assignment kept at start was not taken back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} is outside the mesh block or not a host address")]
    Outside(Ipv4Addr),
    #[error("{0} is already assigned to another key of the organization")]
    Taken(Ipv4Addr),
}

impl Ipam {
    /// The address already assigned to `(org, key)`.
    pub fn get(&self, org: &str, key: &Key) -> Option<Ipv4Addr> {
        self.by_key.get(&(org.to_string(), *key)).copied()
    }

    /// Takes back an assignment kept from before (same pair and address: no change).
    pub fn restore(&mut self, org: &str, key: &Key, ip: Ipv4Addr) -> Result<(), RestoreError> {
        if self.get(org, key) == Some(ip) {
            return Ok(());
        }
        if !usable(ip) {
            return Err(RestoreError::Outside(ip));
        }
        let used = self.used.entry(org.to_string()).or_default();
        if !used.insert(ip) {
            return Err(RestoreError::Taken(ip));
        }
        self.by_key.insert((org.to_string(), *key), ip);
        Ok(())
    }

    /// The address `(org, key)` has, else the first free one from its first choice, without
    /// recording it ([`Ipam::restore`] does, once it is kept). `None` only when every address
    /// of the organization is taken.
    pub fn choose(&self, org: &str, key: &Key) -> Option<Ipv4Addr> {
        if let Some(ip) = self.get(org, key) {
            return Some(ip);
        }
        let used = self.used.get(org);
        let start = first_choice(org, key);
        (0..USABLE)
            .map(|i| at((start - 1 + i) % USABLE + 1))
            .find(|ip| used.is_none_or(|u| !u.contains(ip)))
    }

    /// [`Ipam::choose`], recorded.
    pub fn assign(&mut self, org: &str, key: &Key) -> Option<Ipv4Addr> {
        let ip = self.choose(org, key)?;
        self.restore(org, key, ip).ok()?;
        Some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_block_edges_are_never_handed_out() {
        assert!(!usable(Ipv4Addr::new(100, 64, 0, 0)));
        assert!(!usable(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(!usable(Ipv4Addr::new(100, 128, 0, 1)));
        assert!(!usable(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(usable(at(1)) && usable(at(USABLE)));
        assert_eq!(at(USABLE), Ipv4Addr::new(100, 127, 255, 254));
    }

    #[test]
    fn a_taken_first_choice_moves_to_the_next_free_address() {
        let mut ipam = Ipam::default();
        let a = ipam.assign("acme", &[1; 32]).unwrap();
        // Another key whose first choice is taken by hand: it gets the next address.
        let key = [2; 32];
        let mut other = Ipam::default();
        let first = other.assign("acme", &key).unwrap();
        ipam.restore("acme", &[3; 32], first).unwrap();
        let moved = ipam.assign("acme", &key).unwrap();
        assert_ne!(moved, first);
        assert!(usable(moved) && moved != a);
        assert_eq!(
            ipam.restore("acme", &[4; 32], moved),
            Err(RestoreError::Taken(moved))
        );
        assert_eq!(
            ipam.restore("acme", &[4; 32], MESH_NET),
            Err(RestoreError::Outside(MESH_NET))
        );
    }

    fn org() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "acme".to_string(),
            "beta".to_string(),
            "c".to_string(),
        ])
    }

    proptest! {
        /// Whatever the order of requests: one address per (org, key), inside the block, unique
        /// within the organization, the same when asked again, and the same after a restart that
        /// restores what was kept.
        #[test]
        fn unique_within_an_org_and_stable(
            reqs in prop::collection::vec((org(), 0u8..24), 1..80),
        ) {
            let mut ipam = Ipam::default();
            let mut kept: Vec<(String, Key, Ipv4Addr)> = Vec::new();
            for (org, k) in &reqs {
                let key = [*k; 32];
                let ip = ipam.assign(org, &key).unwrap();
                prop_assert!(usable(ip));
                if let Some((_, _, before)) = kept.iter().find(|(o, kk, _)| o == org && *kk == key) {
                    prop_assert_eq!(*before, ip);
                } else {
                    prop_assert!(!kept.iter().any(|(o, _, i)| o == org && *i == ip));
                    kept.push((org.clone(), key, ip));
                }
            }
            let mut again = Ipam::default();
            for (o, k, ip) in &kept {
                again.restore(o, k, *ip).unwrap();
            }
            for (o, k, ip) in &kept {
                prop_assert_eq!(again.assign(o, k), Some(*ip));
            }
        }

        /// The first choice depends on the pair only: an empty allocator gives the same address.
        #[test]
        fn the_first_choice_is_a_function_of_the_pair(o in org(), k in prop::array::uniform32(any::<u8>())) {
            let a = Ipam::default().assign(&o, &k);
            prop_assert_eq!(a, Ipam::default().assign(&o, &k));
            prop_assert_eq!(a, Some(at(first_choice(&o, &k))));
        }
    }
}
