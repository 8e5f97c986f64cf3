//! Who links to whom (sans-I/O): from the live gateways of every region, a gateway's cluster
//! peers (every other gateway of its region), its **home** in each other region (the gateway
//! there its cross-region traffic goes through, chosen by rendezvous hashing so that a
//! region's traffic spreads over the other region's gateways and a lost home moves only the
//! gateways that used it), which links it must keep, and which of them it dials.
//!
//! Every gateway computes the same answers from the same list, so two gateways agree on
//! whether a link between them is wanted (by either side) and on which side dials it, and
//! exactly one connection results: inside a region the gateway whose id sorts first dials;
//! between regions the gateway of the region whose name sorts first dials (as between single
//! gateways with static `--peer` entries, so both kinds of configuration agree).

use std::collections::{BTreeMap, BTreeSet};

/// A live gateway, as the control plane's registrations (or static configuration) know it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub gateway_id: String,
    pub region: String,
    /// Where its QUIC endpoint (cluster and federation links) listens.
    pub addr: String,
}

/// A gateway's view of the membership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Live gateways by region, each sorted by id.
    regions: BTreeMap<String, Vec<Member>>,
}

/// Why a link is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkKind {
    /// Both ends in the same region.
    Cluster,
    /// Between regions: one end is the other's home (or each other's).
    Federation,
}

/// A link a gateway must keep.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WantedLink {
    pub peer: Member,
    pub kind: LinkKind,
    /// This side dials ([`dials`]); the other waits to be dialled.
    pub dial: bool,
}

/// Homes a gateway keeps links to in every other region: its home and the next one, so that
/// losing the home re-homes its traffic within the failure detection time, without a dial.
pub const HOMES: usize = 2;

/// Whether gateway `me` of `my_region` dials the link to `peer` of `peer_region`: inside a
/// region the lower gateway id dials, between regions the gateway of the region that sorts
/// first.
pub fn dials(me: &str, my_region: &str, peer: &str, peer_region: &str) -> bool {
    if my_region == peer_region {
        me < peer
    } else {
        my_region < peer_region
    }
}

/// The gateway of a region that a gateway's traffic for it goes through now: the first of
/// its `homes` there (best first, [`Membership::homes`]) that `is_linked`, else, for links
/// made before the membership was known or to static `--peer` addresses, the linked gateway
/// of the region (`linked`) whose id sorts first. `None` when nothing of the region is
/// linked.
pub fn route_via<'a>(
    homes: &'a [String],
    linked: impl IntoIterator<Item = &'a str>,
    is_linked: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    homes
        .iter()
        .map(String::as_str)
        .find(|h| is_linked(h))
        .or_else(|| linked.into_iter().min())
}

/// The rendezvous weight of `candidate` for `chooser`: a 64-bit FNV-1a hash of both ids.
/// Stable across processes and versions (it decides which links exist), cheap, and spreads
/// well enough for a handful of gateways.
fn weight(chooser: &str, candidate: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in chooser
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(candidate.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // One more mixing round (FNV's low bits are weak for short, similar inputs).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Membership {
    pub fn new(members: impl IntoIterator<Item = Member>) -> Self {
        let mut regions: BTreeMap<String, Vec<Member>> = BTreeMap::new();
        for m in members {
            regions.entry(m.region.clone()).or_default().push(m);
        }
        for v in regions.values_mut() {
            v.sort();
            v.dedup_by(|a, b| a.gateway_id == b.gateway_id);
        }
        Membership { regions }
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    pub fn members(&self, region: &str) -> &[Member] {
        self.regions.get(region).map_or(&[], Vec::as_slice)
    }

    pub fn find(&self, gateway_id: &str) -> Option<&Member> {
        self.regions
            .values()
            .flatten()
            .find(|m| m.gateway_id == gateway_id)
    }

    /// The gateway of `region` that `chooser`'s traffic for that region goes through.
    pub fn home(&self, chooser: &str, region: &str) -> Option<&Member> {
        self.homes(chooser, region).into_iter().next()
    }

    /// `chooser`'s homes in `region`, best first: the first is its home, the second the one it
    /// keeps a link to as well, so that losing the home moves its traffic at once (no dial).
    pub fn homes(&self, chooser: &str, region: &str) -> Vec<&Member> {
        let mut v: Vec<&Member> = self.members(region).iter().collect();
        v.sort_by_key(|m| std::cmp::Reverse((weight(chooser, &m.gateway_id), &m.gateway_id)));
        v.truncate(HOMES);
        v
    }

    /// Every link `me` (of `my_region`) must keep: one to every other gateway of its region,
    /// one to each of its homes in every other region, and one to every gateway elsewhere
    /// whose home it is.
    pub fn wanted(&self, me: &str, my_region: &str) -> Vec<WantedLink> {
        let mut out = BTreeSet::new();
        let dial = |peer: &Member| dials(me, my_region, &peer.gateway_id, &peer.region);
        for peer in self.members(my_region) {
            if peer.gateway_id != me {
                out.insert(WantedLink {
                    dial: dial(peer),
                    peer: peer.clone(),
                    kind: LinkKind::Cluster,
                });
            }
        }
        for (region, members) in &self.regions {
            if region == my_region {
                continue;
            }
            for home in self.homes(me, region) {
                out.insert(WantedLink {
                    dial: dial(home),
                    peer: home.clone(),
                    kind: LinkKind::Federation,
                });
            }
            for other in members {
                if self
                    .homes(&other.gateway_id, my_region)
                    .iter()
                    .any(|h| h.gateway_id == me)
                {
                    out.insert(WantedLink {
                        dial: dial(other),
                        peer: other.clone(),
                        kind: LinkKind::Federation,
                    });
                }
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, region: &str) -> Member {
        Member {
            gateway_id: id.into(),
            region: region.into(),
            addr: format!("{id}:7424"),
        }
    }

    fn cluster(per_region: usize, regions: &[&str]) -> Membership {
        Membership::new(
            regions
                .iter()
                .flat_map(|r| (1..=per_region).map(move |i| m(&format!("{r}{i}"), r))),
        )
    }

    #[test]
    fn both_ends_agree_on_every_link_and_exactly_one_dials() {
        let ms = cluster(3, &["a", "b", "c"]);
        let all: Vec<Member> = ms.regions().flat_map(|r| ms.members(r).to_vec()).collect();
        for x in &all {
            for l in ms.wanted(&x.gateway_id, &x.region) {
                let back = ms.wanted(&l.peer.gateway_id, &l.peer.region);
                let mirror = back
                    .iter()
                    .find(|b| b.peer.gateway_id == x.gateway_id)
                    .unwrap_or_else(|| {
                        panic!("{} wants {} but not back", x.gateway_id, l.peer.gateway_id)
                    });
                assert_ne!(l.dial, mirror.dial, "exactly one side dials");
                assert_eq!(l.kind, mirror.kind);
            }
        }
    }

    #[test]
    fn a_gateway_links_its_whole_region_and_one_home_per_other_region() {
        let ms = cluster(3, &["a", "b"]);
        let wanted = ms.wanted("a1", "a");
        let cluster: Vec<&str> = wanted
            .iter()
            .filter(|l| l.kind == LinkKind::Cluster)
            .map(|l| l.peer.gateway_id.as_str())
            .collect();
        assert_eq!(cluster, vec!["a2", "a3"]);
        for home in ms.homes("a1", "b") {
            assert!(
                wanted
                    .iter()
                    .any(|l| l.kind == LinkKind::Federation && l.peer == *home)
            );
        }
        assert_eq!(ms.homes("a1", "b").len(), 2);
        assert!(
            wanted
                .iter()
                .filter(|l| l.kind == LinkKind::Federation)
                .all(|l| l.peer.region == "b")
        );
    }

    #[test]
    fn homes_spread_and_a_lost_home_moves_only_its_own_gateways() {
        let ms = cluster(8, &["a", "b"]);
        let homes: BTreeMap<String, String> = ms
            .members("a")
            .iter()
            .map(|x| {
                (
                    x.gateway_id.clone(),
                    ms.home(&x.gateway_id, "b").unwrap().gateway_id.clone(),
                )
            })
            .collect();
        let distinct: BTreeSet<&String> = homes.values().collect();
        assert!(
            distinct.len() >= 3,
            "8 gateways should spread over several homes: {homes:?}"
        );
        // b's most used home dies: only the gateways that used it move.
        let lost = homes.values().next().unwrap().clone();
        let after = Membership::new(
            ms.regions()
                .flat_map(|r| ms.members(r).to_vec())
                .filter(|x| x.gateway_id != lost),
        );
        for (a, before) in &homes {
            let now = after.home(a, "b").unwrap().gateway_id.clone();
            if *before != lost {
                assert_eq!(&now, before, "{a} kept its home");
            } else {
                assert_ne!(now, lost);
            }
        }
    }

    #[test]
    fn a_lone_gateway_per_region_links_to_each_other_region_once() {
        let ms = cluster(1, &["a", "b", "c"]);
        let w = ms.wanted("a1", "a");
        assert_eq!(
            w.iter()
                .map(|l| l.peer.gateway_id.as_str())
                .collect::<Vec<_>>(),
            vec!["b1", "c1"]
        );
        assert!(w.iter().all(|l| l.dial), "region a sorts first");
        assert!(ms.wanted("c1", "c").iter().all(|l| !l.dial));
    }
}
