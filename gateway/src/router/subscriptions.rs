//! Subscriptions: sessions' subscriptions grouped by (pattern, queue group) into [`Group`]s
//! in the lock-free subject table, and the balancer's choice of one member of a group.

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Group, GroupKey, Member, Router, Subscription};
use crate::balancer::{Balancer, MemberId};
use crate::connection::Connection;

impl Group {
    pub fn members(&self) -> arc_swap::Guard<Arc<Vec<Arc<Member>>>> {
        self.members.load()
    }

    pub fn is_queue(&self) -> bool {
        self.queue.is_some()
    }

    /// Chooses one member with the balancer; `None` when the group is empty.
    pub(super) fn pick(&self, now: Instant) -> Option<Arc<Member>> {
        let members = self.members.load();
        match members.len() {
            0 => return None,
            1 => return Some(members[0].clone()),
            _ => {}
        }
        let id = {
            let mut rng = rand::rng();
            let depth = |id: MemberId| {
                members
                    .iter()
                    .find(|m| m.id == id)
                    .map_or(0, |m| m.conn.outbound.depth())
            };
            self.balancer.lock().pick(now.into_std(), &mut rng, depth)?
        };
        members.iter().find(|m| m.id == id).cloned()
    }

    /// What `member` costs now (its estimate; its requests in flight plus queued frames).
    pub fn cost_of(&self, member: &Member, now: Instant) -> Option<crate::balancer::GroupCost> {
        self.balancer
            .lock()
            .cost_of(member.id, now.into_std(), member.conn.outbound.depth())
    }

    /// The cheapest member's cost now; `None` when the group is empty.
    pub fn cheapest(&self, now: Instant) -> Option<crate::balancer::GroupCost> {
        let members = self.members.load();
        let depth = |id: MemberId| {
            members
                .iter()
                .find(|m| m.id == id)
                .map_or(0, |m| m.conn.outbound.depth())
        };
        self.balancer.lock().cheapest(now.into_std(), depth)
    }

    /// Balancer state for metrics and debugging.
    pub fn balancer_snapshot(&self) -> Vec<crate::balancer::MemberSnapshot> {
        self.balancer.lock().snapshot(Instant::now().into_std())
    }
}

impl Router {
    pub fn subscribe(
        &self,
        conn: &Arc<Connection>,
        sid: u64,
        pattern: &str,
        queue: &str,
    ) -> Subscription {
        let key: GroupKey = (pattern.into(), queue.into());
        let member = Arc::new(Member {
            id: self.next_id(),
            sid,
            conn: conn.clone(),
        });
        let now = Instant::now().into_std();
        let mut groups = self.groups.lock();
        let group = match groups.get(&key) {
            Some(group) => group.clone(),
            None => {
                let group = Arc::new(Group {
                    pattern: pattern.into(),
                    queue: (!queue.is_empty()).then(|| queue.into()),
                    members: ArcSwap::from_pointee(Vec::new()),
                    balancer: Mutex::new(Balancer::new(self.balancer_cfg.clone())),
                });
                groups.insert(key, group.clone());
                if let Some(remote) = self.remote.get() {
                    remote.interest_changed(pattern, (!queue.is_empty()).then_some(queue), true);
                }
                let table = self.table.load();
                self.table
                    .store(Arc::new(table.insert(pattern, group.clone())));
                self.table_generation
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                group
            }
        };
        let mut members = Vec::clone(&group.members.load());
        members.push(member.clone());
        group.members.store(Arc::new(members));
        group.balancer.lock().add(member.id, now);
        self.metrics.subscriptions.inc();
        Subscription {
            group,
            member: member.id,
        }
    }

    pub fn unsubscribe(&self, sub: &Subscription) {
        let mut groups = self.groups.lock();
        let group = &sub.group;
        let mut members = Vec::clone(&group.members.load());
        let before = members.len();
        members.retain(|m| m.id != sub.member);
        if members.len() == before {
            return;
        }
        self.metrics.subscriptions.dec();
        group.balancer.lock().remove(sub.member);
        let empty = members.is_empty();
        group.members.store(Arc::new(members));
        if empty {
            let key: GroupKey = (
                group.pattern.clone(),
                group.queue.clone().unwrap_or_default(),
            );
            groups.remove(&key);
            if let Some(remote) = self.remote.get() {
                remote.interest_changed(&group.pattern, group.queue.as_deref(), false);
            }
            let table = self.table.load();
            let (table, _) = table.remove(&group.pattern, |g| Arc::ptr_eq(g, group));
            self.table.store(Arc::new(table));
            self.table_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Groups whose pattern matches `subject`.
    pub fn matching_groups(&self, subject: &str, out: &mut Vec<Arc<Group>>) {
        self.table
            .load()
            .for_each_match(subject, |g| out.push(g.clone()));
    }

    /// Names of the local queue groups with members matching `subject`.
    pub fn local_queue_groups(&self, subject: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.table.load().for_each_match(subject, |g| {
            if let Some(q) = &g.queue
                && !g.members().is_empty()
                && !out.iter().any(|o: &String| **o == **q)
            {
                out.push(q.to_string());
            }
        });
        out
    }

    /// What the local queue group `queue` costs for a message on `subject`: its cheapest
    /// member (the lowest over the matching patterns that share the group name); `None` when
    /// no local member matches. For the choice between this gateway and the region's other
    /// gateways, asked only for groups that other gateways have members of.
    pub fn local_queue_cost(
        &self,
        subject: &str,
        queue: &str,
    ) -> Option<crate::balancer::GroupCost> {
        let now = Instant::now();
        let cost =
            |c: &crate::balancer::GroupCost| c.estimate.as_secs_f64() * (f64::from(c.load) + 1.0);
        let mut best: Option<crate::balancer::GroupCost> = None;
        self.table.load().for_each_match(subject, |g| {
            if g.queue.as_deref() != Some(queue) {
                return;
            }
            if let Some(c) = g.cheapest(now)
                && best.as_ref().is_none_or(|b| cost(&c) < cost(b))
            {
                best = Some(c);
            }
        });
        best
    }

    /// One member of one group matching `subject`: a group chosen at random among the
    /// matching ones, then a member by that group's balancer.
    pub(super) fn pick_responder(
        &self,
        subject: &str,
        now: Instant,
    ) -> Option<(Arc<Group>, Arc<Member>)> {
        let mut groups = Vec::new();
        self.matching_groups(subject, &mut groups);
        groups.retain(|g| !g.members.load().is_empty());
        while !groups.is_empty() {
            let i = if groups.len() == 1 {
                0
            } else {
                rand::Rng::random_range(&mut rand::rng(), 0..groups.len())
            };
            let group = groups.swap_remove(i);
            if let Some(member) = group.pick(now) {
                self.metrics.balancer_picks.inc();
                return Some((group, member));
            }
        }
        None
    }
}
