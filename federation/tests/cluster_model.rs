//! A deterministic model of `async` replication into a regional cluster, where timing cannot
//! hide a bug in re-homing.
//!
//! The real cores run in a simulated world: an origin gateway `a1` with its spool
//! ([`Outbox`]); a region `b` of three gateways, each with the receiver's [`Inbox`], a disk for
//! its marks, and the per-stream first-delivery marks of the cluster bridge (here
//! [`FirstDelivery`], the same rule: deliver only what is newer than what this gateway
//! delivered of the stream); `a1`'s homes in `b` chosen by the real [`Membership`]; link
//! sessions between `a1` and each `b` gateway (lost when cut or when either end dies), and
//! cluster links inside `b` carrying the home's relays (lost when either end dies). A seeded
//! schedule publishes, commits, pumps, delivers frames in any interleaving, cuts `a1`'s links,
//! kills and restarts `b` gateways, and lets `a1`'s view of the membership lag behind.
//!
//! Checked after every step: every incarnation of every `b` gateway delivers each message at
//! most once and in publish order; and at the end, with everything healed, every gateway that
//! was never killed delivered every acknowledged message exactly once, and `a1`'s spool is
//! empty.
//!
//! Cuts between live gateways of `b` are modelled too: relays and confirmations in flight
//! are lost, the peer counts as absent (relays to it are owed, not sent), and on the heal
//! the home asks `a1` to send again from the oldest owed message and relays the resends.
//! When the cut outlasts the grace period the home holds the peer's relays (docs/cluster.md
//! §4): it asks `a1` for the owed ones again and writes them, and every later relay for the
//! peer, to a queue of its own spool (a real [`Outbox`], its own stream), confirming them to
//! `a1` once written; when the link heals that queue is sent first, received through the
//! peer's [`Inbox`] like any stream, and newer relays wait behind it. Such a peer is held to
//! completeness like any other. Only when the control plane stops listing a peer does a home
//! give its owed relays up; that gateway is excused from completeness (its loss is counted
//! in the real system), never from at-most-once and order.
//!
//! Not modelled: restarts of `a1` (the replication model covers those).

use std::collections::{BTreeSet, HashMap, VecDeque};

use nexus_federation::cluster::membership::{Member, Membership};
use nexus_federation::link::LinkId;
use nexus_federation::replication::inbox::{Inbox, RelayTo, Verdict};
use nexus_federation::replication::outbox::Outbox;
use nexus_federation::replication::{Limits, StreamId};
use nexus_proto::v1::{Forward, RelayOf, Spooled};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const B: [&str; 3] = ["b1", "b2", "b3"];
const LINK_QUEUE: usize = 8;

/// The cluster bridge's rule for local delivery (`bridge::cluster::Cluster::first_delivery`).
#[derive(Default)]
struct FirstDelivery(HashMap<String, u64>);

impl FirstDelivery {
    fn first(&mut self, stream: &str, seq: u64) -> bool {
        let mark = self.0.entry(stream.to_owned()).or_default();
        if seq <= *mark {
            return false;
        }
        *mark = seq;
        true
    }
}

enum Up {
    Ack(u64),
    Nack(u64),
}

/// A link session between `a1` and one `b` gateway.
struct FedLink {
    id: LinkId,
    to: usize,
    down: VecDeque<Spooled>,
    up: VecDeque<Up>,
    broken: bool,
}

struct Gateway {
    alive: bool,
    incarnation: u32,
    inbox: Inbox,
    disk: HashMap<StreamId, u64>,
    writes: VecDeque<(StreamId, u64)>,
    marks: FirstDelivery,
    /// Deliveries of this incarnation, and every incarnation's count.
    delivered: Vec<u64>,
    /// The seq of the newest message this incarnation delivered in order.
    in_order_last: u64,
    killed_ever: bool,
    /// A home gave up relays owed to it (a cut outlasted the grace period).
    given_up_ever: bool,
    /// Relays (and held relays, `relay_of` set) from each other gateway of `b`, in order.
    relays: HashMap<usize, VecDeque<Spooled>>,
    /// Confirmations of relays from each other gateway of `b` (it delivered them), in order.
    confirms: HashMap<usize, VecDeque<(String, u64)>>,
    /// This gateway's own spool: its queues `@<peer>` of held relays (committed at once: the
    /// write is not what is being checked here).
    own: Outbox,
    /// Answers about the held queues from each peer (it received them through its inbox).
    held_up: HashMap<usize, VecDeque<Up>>,
    /// Per peer, the position of the newest held relay written (read back on a restart, as
    /// the real spool's recovery does).
    held_last: HashMap<usize, u64>,
}

struct World {
    rng: StdRng,
    outbox: Outbox,
    /// Publish -> acknowledged (committed), and seq -> message.
    acked: BTreeSet<u64>,
    pending: VecDeque<(u64, u64)>,
    seqs: HashMap<u64, u64>,
    next_msg: u64,
    gws: Vec<Gateway>,
    links: Vec<FedLink>,
    next_link: u64,
    /// `a1`'s view of which `b` gateways are alive (the membership lags).
    view: Vec<bool>,
    trace: VecDeque<String>,
    rehomes: u64,
    /// Cluster links of `b` cut while both ends live, as (lower, higher) index pairs.
    cut: BTreeSet<(usize, usize)>,
    cuts: u64,
    resent_relays: u64,
    /// The current cluster link between two gateways of `b` (a new one after each cut or
    /// restart), for the held queues' cursors.
    cluster_links: HashMap<(usize, usize), LinkId>,
    held_cuts: u64,
    held_relays: u64,
    late_held: u64,
}

fn pair(x: usize, y: usize) -> (usize, usize) {
    (x.min(y), x.max(y))
}

fn forward(msg: u64) -> Forward {
    Forward {
        subject: "orders.x".into(),
        payload: msg.to_be_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn msg_of(s: &Spooled) -> u64 {
    u64::from_be_bytes(s.forward.as_ref().unwrap().payload[..8].try_into().unwrap())
}

impl World {
    fn new(seed: u64) -> Self {
        World {
            rng: StdRng::seed_from_u64(seed),
            outbox: Outbox::new(StreamId::from("a1.model"), Limits::default()),
            acked: BTreeSet::new(),
            pending: VecDeque::new(),
            seqs: HashMap::new(),
            next_msg: 1,
            gws: B
                .iter()
                .map(|b| Gateway {
                    alive: true,
                    incarnation: 0,
                    inbox: Inbox::default(),
                    disk: HashMap::new(),
                    writes: VecDeque::new(),
                    marks: FirstDelivery::default(),
                    delivered: Vec::new(),
                    in_order_last: 0,
                    killed_ever: false,
                    given_up_ever: false,
                    relays: HashMap::new(),
                    confirms: HashMap::new(),
                    own: Outbox::new(StreamId::from(format!("{b}.own")), Limits::default()),
                    held_up: HashMap::new(),
                    held_last: HashMap::new(),
                })
                .collect(),
            links: Vec::new(),
            next_link: 1,
            view: vec![true; B.len()],
            trace: VecDeque::new(),
            rehomes: 0,
            cut: BTreeSet::new(),
            cuts: 0,
            resent_relays: 0,
            cluster_links: HashMap::new(),
            held_cuts: 0,
            held_relays: 0,
            late_held: 0,
        }
    }

    /// Whether live gateways `x` and `y` of `b` are linked.
    fn linked(&self, x: usize, y: usize) -> bool {
        x != y && self.gws[x].alive && self.gws[y].alive && !self.cut.contains(&pair(x, y))
    }

    /// The current cluster link between `x` and `y`.
    fn cluster_link(&mut self, x: usize, y: usize) -> LinkId {
        let next = &mut self.next_link;
        *self.cluster_links.entry(pair(x, y)).or_insert_with(|| {
            *next += 1;
            LinkId(*next)
        })
    }

    /// The link between `x` and `y` ended: the next one has a new id.
    fn end_cluster_link(&mut self, x: usize, y: usize) {
        self.cluster_links.remove(&pair(x, y));
    }

    /// Home `g` writes relay `s` (message `s.seq` of `a1`'s stream) for `peer` to its held
    /// queue; once written it counts as confirmed by the peer.
    fn hold_relay(&mut self, g: usize, peer: usize, s: &Spooled) {
        let key = format!("@{}", B[peer]);
        let relay_of = Some(RelayOf {
            stream: s.stream.clone(),
            seq: s.seq,
        });
        let forward = s.forward.clone().unwrap();
        let gw = &mut self.gws[g];
        let (held, _) = gw
            .own
            .append_relay(&key, &s.route, forward, relay_of, 0)
            .unwrap();
        gw.own.committed(&key, held.seq);
        gw.inbox.held_at(B[peer], held.seq);
        gw.held_last.insert(peer, held.seq);
        let stream = StreamId::from(s.stream.as_str());
        if let Some(mark) = gw.inbox.relay_confirmed(&stream, B[peer], s.seq) {
            gw.writes.push_back((stream, mark));
        }
        self.held_relays += 1;
        self.note(format!("{} held seq {} for {}", B[g], s.seq, B[peer]));
    }

    /// Home `g` sends what its held queue for `peer` has not had on their link.
    fn pump_held(&mut self, g: usize, peer: usize, max: usize) {
        if !self.linked(g, peer) {
            return;
        }
        let link = self.cluster_link(g, peer);
        let key = format!("@{}", B[peer]);
        for frame in self.gws[g].own.next_to_send(&key, link, max) {
            self.gws[peer].relays.entry(g).or_default().push_back(frame);
        }
    }

    /// Home `g` hears about its held queue from `peer`.
    fn held_answer(&mut self, g: usize, peer: usize) {
        let Some(up) = self.gws[g]
            .held_up
            .get_mut(&peer)
            .and_then(|q| q.pop_front())
        else {
            return;
        };
        let key = format!("@{}", B[peer]);
        match up {
            Up::Ack(up_to) => {
                self.gws[g].own.ack(&key, up_to);
            }
            Up::Nack(have) => {
                if self.linked(g, peer) {
                    let link = self.cluster_link(g, peer);
                    self.gws[g].own.rewind(&key, link, have);
                }
            }
        }
    }

    /// Home `g` asks `a1` to send again from the oldest relay `peer` owes it (on the link
    /// the stream came on, if it still stands).
    fn ask_owed(&mut self, g: usize, peer: usize) -> bool {
        let mut asked = false;
        for (stream, first, _) in self.gws[g].inbox.owing(B[peer]) {
            let Some((_, link)) = self.gws[g].inbox.sender(&stream) else {
                continue;
            };
            if let Some(l) = self.links.iter_mut().find(|l| l.id == link && !l.broken) {
                l.up.push_back(Up::Nack(first - 1));
                asked = true;
            }
        }
        asked
    }

    fn note(&mut self, s: String) {
        if self.trace.len() == 400 {
            self.trace.pop_front();
        }
        self.trace.push_back(s);
    }

    fn fail(&self, why: String) -> String {
        let t: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        format!("{why}\nlast steps:\n  {}", t.join("\n  "))
    }

    /// `a1`'s homes in `b`, best first, over the gateways it believes alive.
    fn homes(&self) -> Vec<usize> {
        let members = B
            .iter()
            .enumerate()
            .filter(|(i, _)| self.view[*i])
            .map(|(_, id)| Member {
                gateway_id: (*id).to_owned(),
                region: "b".into(),
                addr: String::new(),
            })
            .chain(std::iter::once(Member {
                gateway_id: "a1".into(),
                region: "a".into(),
                addr: String::new(),
            }));
        let ms = Membership::new(members);
        ms.homes("a1", "b")
            .into_iter()
            .map(|m| B.iter().position(|b| *b == m.gateway_id).unwrap())
            .collect()
    }

    /// The live link `a1` sends through: its first home with one.
    fn route(&self) -> Option<usize> {
        self.homes()
            .into_iter()
            .find_map(|h| self.links.iter().rposition(|l| l.to == h && !l.broken))
    }

    fn publish(&mut self) {
        let msg = self.next_msg;
        self.next_msg += 1;
        let (s, _) = self.outbox.append("b", "orders", forward(msg), 0).unwrap();
        self.seqs.insert(s.seq, msg);
        self.pending.push_back((msg, s.seq));
    }

    fn commit(&mut self, n: usize) {
        for _ in 0..n {
            let Some((msg, seq)) = self.pending.pop_front() else {
                return;
            };
            self.outbox.committed("b", seq);
            self.acked.insert(msg);
        }
    }

    fn pump(&mut self, max: usize) {
        let Some(li) = self.route() else { return };
        let id = self.links[li].id;
        for frame in self.outbox.next_to_send("b", id, max) {
            if self.links[li].down.len() >= LINK_QUEUE {
                self.outbox.unsend("b", id, frame.seq);
                break;
            }
            self.links[li].down.push_back(frame);
        }
    }

    /// `b` gateway `g` delivers `s` locally if it is the first time.
    fn deliver_local(&mut self, g: usize, s: &Spooled) -> Result<(), String> {
        let gw = &mut self.gws[g];
        if !gw.marks.first(&s.stream, s.seq) {
            return Ok(());
        }
        self.deliver_checked(g, s)
    }

    /// A held relay (`s` as the message of `a1`'s stream it is) reaches `g`: delivered when
    /// it continues the stream, and also when newer messages of the stream reached `g` by
    /// another path meanwhile (its home changed while the relay sat in the held queue) but
    /// its message id is new here: late, out of order, rather than lost.
    fn deliver_held(&mut self, g: usize, s: &Spooled) -> Result<(), String> {
        let msg = msg_of(s);
        if self.gws[g].marks.first(&s.stream, s.seq) {
            return self.deliver_checked(g, s);
        }
        if !self.gws[g].delivered.contains(&msg) {
            self.note(format!("{} delivered m{msg} late", B[g]));
            self.late_held += 1;
            self.gws[g].delivered.push(msg);
        }
        Ok(())
    }

    /// Delivers `s` at `g`, checking it is the first time and in order.
    fn deliver_checked(&mut self, g: usize, s: &Spooled) -> Result<(), String> {
        let msg = msg_of(s);
        let gw = &self.gws[g];
        if gw.delivered.contains(&msg) {
            return Err(self.fail(format!("{} delivered m{msg} twice", B[g])));
        }
        if gw.in_order_last > s.seq {
            let last = self.seqs[&gw.in_order_last];
            return Err(self.fail(format!("{} delivered m{msg} after m{last}", B[g])));
        }
        self.gws[g].delivered.push(msg);
        self.gws[g].in_order_last = s.seq;
        Ok(())
    }

    /// The next frame on link `li` arrives at its `b` gateway.
    fn receive(&mut self, li: usize) -> Result<(), String> {
        let g = self.links[li].to;
        let link = self.links[li].id;
        let Some(s) = self.links[li].down.pop_front() else {
            return Ok(());
        };
        let stream = StreamId::from(s.stream.as_str());
        let verdict = self.gws[g]
            .inbox
            .on_spooled_from("a", "a1", link, &stream, s.seq, s.prev_seq);
        match verdict {
            Verdict::Deliver => {
                // Relayed to every other live gateway of b first, then delivered here; the
                // confirmation to a1 waits for the relays.
                // A peer cut off from g owes it too (absent): sent when the cut heals.
                // One cut off past the grace period gets it through the held queue.
                let mut peers = Vec::new();
                let mut held = Vec::new();
                for (p, name) in B.iter().enumerate() {
                    if p != g && self.gws[p].alive {
                        let linked = !self.cut.contains(&pair(g, p));
                        let done = self.gws[g].own.done_through(&format!("@{name}"));
                        match self.gws[g]
                            .inbox
                            .relay_to(&stream, name, s.seq, linked, || done)
                        {
                            RelayTo::Now => self.gws[p]
                                .relays
                                .entry(g)
                                .or_default()
                                .push_back(s.clone()),
                            RelayTo::Held => held.push(p),
                            RelayTo::Owed => {}
                        }
                        peers.push((*name).to_owned());
                    }
                }
                self.gws[g].inbox.relayed(&stream, s.seq, peers);
                for p in held {
                    self.hold_relay(g, p, &s);
                }
                self.deliver_local(g, &s)?;
                if let Some(mark) = self.gws[g].inbox.to_record(&stream) {
                    self.gws[g].writes.push_back((stream, mark));
                }
            }
            Verdict::Duplicate { ack } => {
                // A resend: relays still owed go out to the peers linked again.
                let cut = self.cut.clone();
                let alive: Vec<bool> = self.gws.iter().map(|x| x.alive).collect();
                let linked = |name: &str| {
                    let p = B.iter().position(|b| *b == name).unwrap();
                    alive[p] && !cut.contains(&pair(g, p))
                };
                for (p, how) in self.gws[g]
                    .inbox
                    .resend_to(&stream, s.seq, s.prev_seq, linked)
                {
                    let p = B.iter().position(|b| *b == p).unwrap();
                    if how == RelayTo::Held {
                        self.hold_relay(g, p, &s);
                    } else {
                        self.gws[p]
                            .relays
                            .entry(g)
                            .or_default()
                            .push_back(s.clone());
                    }
                    self.resent_relays += 1;
                }
                if let Some(mark) = self.gws[g].inbox.to_record(&stream) {
                    self.gws[g].writes.push_back((stream, mark));
                }
                if let Some(up_to) = ack {
                    self.links[li].up.push_back(Up::Ack(up_to));
                }
            }
            Verdict::Gap { nack: Some(have) } => self.links[li].up.push_back(Up::Nack(have)),
            _ => {}
        }
        self.note(format!("{} seq {} on {link}: {verdict:?}", B[g], s.seq));
        Ok(())
    }

    fn relay(&mut self, g: usize, from: usize) -> Result<(), String> {
        let Some(s) = self.gws[g]
            .relays
            .get_mut(&from)
            .and_then(|q| q.pop_front())
        else {
            return Ok(());
        };
        if let Some(of) = s.relay_of.clone() {
            return self.receive_held(g, from, s, of);
        }
        self.note(format!("{} relayed seq {} from {}", B[g], s.seq, B[from]));
        self.deliver_local(g, &s)?;
        // The home hears that this gateway has it.
        self.gws[from]
            .confirms
            .entry(g)
            .or_default()
            .push_back((s.stream.clone(), s.seq));
        Ok(())
    }

    /// A held relay from home `from`'s queue arrives at `g`: judged by `g`'s inbox as a
    /// message of `from`'s own stream, delivered as the message of `a1`'s stream it is.
    fn receive_held(
        &mut self,
        g: usize,
        from: usize,
        s: Spooled,
        of: RelayOf,
    ) -> Result<(), String> {
        let link = self.cluster_link(g, from);
        let stream = StreamId::from(s.stream.as_str());
        let verdict = self.gws[g]
            .inbox
            .on_spooled_from("b", B[from], link, &stream, s.seq, s.prev_seq);
        self.note(format!(
            "{} held seq {} (a1 seq {}) from {}: {verdict:?}",
            B[g], s.seq, of.seq, B[from]
        ));
        match verdict {
            Verdict::Deliver => {
                let original = Spooled {
                    stream: of.stream,
                    seq: of.seq,
                    relay_of: None,
                    ..s
                };
                self.deliver_held(g, &original)?;
                if let Some(mark) = self.gws[g].inbox.to_record(&stream) {
                    self.gws[g].writes.push_back((stream, mark));
                }
            }
            Verdict::Duplicate { ack: Some(up_to) } => self.answer_held(g, from, Up::Ack(up_to)),
            Verdict::Gap { nack: Some(have) } => self.answer_held(g, from, Up::Nack(have)),
            _ => {}
        }
        Ok(())
    }

    /// `g` answers home `home` about its held queue, if their link stands.
    fn answer_held(&mut self, g: usize, home: usize, up: Up) {
        if self.linked(g, home) {
            self.gws[home].held_up.entry(g).or_default().push_back(up);
        }
    }

    /// Home `g` learns that peer `from` delivered a relay.
    fn relay_confirmed(&mut self, g: usize, from: usize) {
        let Some((stream, seq)) = self.gws[g]
            .confirms
            .get_mut(&from)
            .and_then(|q| q.pop_front())
        else {
            return;
        };
        let stream = StreamId::from(stream.as_str());
        if let Some(mark) = self.gws[g].inbox.relay_confirmed(&stream, B[from], seq) {
            self.gws[g].writes.push_back((stream, mark));
        }
    }

    fn record(&mut self, g: usize) {
        let Some((stream, seq)) = self.gws[g].writes.pop_front() else {
            return;
        };
        let gw = &mut self.gws[g];
        let m = gw.disk.entry(stream.clone()).or_default();
        *m = (*m).max(seq);
        let Some((sender, link)) = gw.inbox.sender(&stream) else {
            return;
        };
        let due = gw.inbox.recorded(&stream, seq, link);
        if let Some(home) = B.iter().position(|b| *b == sender) {
            // A home's own stream (held relays): confirmed over the cluster link.
            if let Some(up_to) = due {
                self.answer_held(g, home, Up::Ack(up_to));
            }
        } else if let Some(up_to) = due
            && let Some(l) = self.links.iter_mut().find(|l| l.id == link && !l.broken)
        {
            l.up.push_back(Up::Ack(up_to));
        }
    }

    fn origin_receive(&mut self, li: usize) -> Result<(), String> {
        let g = self.links[li].to;
        let id = self.links[li].id;
        match self.links[li].up.pop_front() {
            Some(Up::Ack(up_to)) => {
                let durable = self.gws[g]
                    .disk
                    .get(&StreamId::from("a1.model"))
                    .copied()
                    .unwrap_or(0);
                if up_to > durable {
                    return Err(
                        self.fail(format!("{} confirmed {up_to} with {durable} on disk", B[g]))
                    );
                }
                self.outbox.ack("b", up_to);
            }
            Some(Up::Nack(have)) => self.outbox.rewind("b", id, have),
            None => {}
        }
        Ok(())
    }

    fn connect(&mut self, g: usize) {
        if !self.gws[g].alive || self.links.iter().any(|l| l.to == g && !l.broken) {
            return;
        }
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let mut up = VecDeque::new();
        for (_, up_to) in self.gws[g].inbox.link_up("a", id) {
            up.push_back(Up::Ack(up_to));
        }
        self.links.push(FedLink {
            id,
            to: g,
            down: VecDeque::new(),
            up,
            broken: false,
        });
    }

    fn kill(&mut self, g: usize) {
        let gw = &mut self.gws[g];
        gw.alive = false;
        gw.killed_ever = true;
        gw.writes.clear();
        gw.relays.clear();
        for l in self.links.iter_mut().filter(|l| l.to == g) {
            l.broken = true;
            l.down.clear();
            l.up.clear();
        }
        for p in &mut self.gws {
            p.relays.remove(&g);
            p.confirms.remove(&g);
            p.held_up.remove(&g);
        }
        self.gws[g].confirms.clear();
        self.gws[g].held_up.clear();
        for p in 0..B.len() {
            self.end_cluster_link(g, p);
        }
        self.cut.retain(|&(x, y)| x != g && y != g);
        // The homes stop waiting for its confirmations.
        for h in 0..B.len() {
            if h != g && self.gws[h].alive {
                for (stream, mark) in self.gws[h].inbox.peer_gone(B[g]) {
                    self.gws[h].writes.push_back((stream, mark));
                }
            }
        }
        self.note(format!("{} killed", B[g]));
    }

    /// The cluster link between live gateways `x` and `y` is cut: what was in flight on it is
    /// lost, and each counts the other as absent.
    fn cut_cluster_link(&mut self, x: usize, y: usize) {
        if x == y || !self.gws[x].alive || !self.gws[y].alive {
            return;
        }
        for (a, b) in [(x, y), (y, x)] {
            self.gws[a].relays.remove(&b);
            self.gws[a].confirms.remove(&b);
            self.gws[a].held_up.remove(&b);
        }
        self.end_cluster_link(x, y);
        self.gws[x].inbox.peer_cut(B[y]);
        self.gws[y].inbox.peer_cut(B[x]);
        if self.cut.insert(pair(x, y)) {
            self.cuts += 1;
            self.note(format!("{} and {} cut apart", B[x], B[y]));
        }
    }

    /// The cut between `x` and `y` heals within the grace period: each, as a home, asks `a1`
    /// to send again from the oldest relay the other owes it (on the link the stream came
    /// on, if it still stands).
    fn heal_cluster_link(&mut self, x: usize, y: usize) {
        if !self.cut.remove(&pair(x, y)) {
            return;
        }
        self.note(format!("{} and {} linked again", B[x], B[y]));
        for (home, peer) in [(x, y), (y, x)] {
            self.gws[home].inbox.peer_linked(B[peer]);
            self.ask_owed(home, peer);
        }
    }

    /// The cut between `x` and `y` outlasted the grace period while the control plane lists
    /// both: each holds the other's relays, asking `a1` again for the owed ones.
    fn past_grace(&mut self, x: usize, y: usize) {
        if !self.cut.contains(&pair(x, y)) {
            return;
        }
        for (home, peer) in [(x, y), (y, x)] {
            if !self.gws[home].inbox.is_held(B[peer]) {
                self.gws[home].inbox.hold(B[peer]);
                self.ask_owed(home, peer);
                self.held_cuts += 1;
                self.note(format!("{} holds relays for {}", B[home], B[peer]));
            }
        }
    }

    /// The cut between `x` and `y` outlasted the grace period and the control plane stopped
    /// listing them: each gives up the relays the other owes it (the cut then heals).
    fn give_up(&mut self, x: usize, y: usize) {
        if !self.cut.remove(&pair(x, y)) {
            return;
        }
        self.note(format!("{} and {} gave each other up", B[x], B[y]));
        for (home, peer) in [(x, y), (y, x)] {
            if self.gws[home].inbox.owed_to(B[peer]) > 0 {
                self.gws[peer].given_up_ever = true;
            }
            for (stream, mark) in self.gws[home].inbox.peer_gone(B[peer]) {
                self.gws[home].writes.push_back((stream, mark));
            }
        }
    }

    fn restart(&mut self, g: usize) {
        let gw = &mut self.gws[g];
        gw.alive = true;
        gw.incarnation += 1;
        let mut inbox = Inbox::default();
        for (s, seq) in &gw.disk {
            let region = if s.as_str().starts_with("a1") {
                "a"
            } else {
                "b"
            };
            inbox.restore(s.clone(), region, *seq);
        }
        gw.inbox = inbox;
        gw.marks = FirstDelivery::default();
        gw.delivered.clear();
        gw.in_order_last = 0;
        // Its held queues are on its disk (committed at once here); the relays in them
        // keep their order on the way out.
        for (p, name) in B.iter().enumerate() {
            let key = format!("@{name}");
            if p != g
                && self.gws[g].own.depth(&key) > 0
                && let Some(&last) = self.gws[g].held_last.get(&p)
            {
                self.gws[g].inbox.held_at(name, last);
            }
        }
        self.note(format!("{} restarted", B[g]));
    }

    fn step(&mut self) -> Result<(), String> {
        let g = self.rng.random_range(0..B.len());
        let before = self.route().map(|l| self.links[l].to);
        match self.rng.random_range(0..100) {
            0..=14 => self.publish(),
            15..=24 => {
                let n = self.rng.random_range(1..5);
                self.commit(n);
            }
            25..=39 => {
                let max = self.rng.random_range(1..6);
                self.pump(max);
            }
            40..=59 => {
                let live: Vec<usize> = (0..self.links.len())
                    .filter(|l| !self.links[*l].broken)
                    .collect();
                if !live.is_empty() {
                    let li = live[self.rng.random_range(0..live.len())];
                    if self.rng.random_bool(0.6) {
                        self.receive(li)?;
                    } else {
                        self.origin_receive(li)?;
                    }
                }
            }
            60..=65 => {
                let from = self.rng.random_range(0..B.len());
                if self.gws[g].alive {
                    self.relay(g, from)?;
                }
            }
            66 => {
                let peer = self.rng.random_range(0..B.len());
                let max = self.rng.random_range(1..6);
                self.pump_held(g, peer, max);
            }
            67 => {
                let peer = self.rng.random_range(0..B.len());
                if self.gws[g].alive {
                    self.held_answer(g, peer);
                }
            }
            68..=71 => {
                let from = self.rng.random_range(0..B.len());
                if self.gws[g].alive {
                    self.relay_confirmed(g, from);
                }
            }
            72..=79 if self.gws[g].alive => self.record(g),
            72..=79 => {}
            80..=84 => self.connect(g),
            85..=87 => {
                // a1's link to g is cut (both ends live).
                for l in self.links.iter_mut().filter(|l| l.to == g) {
                    l.broken = true;
                    l.down.clear();
                    l.up.clear();
                }
            }
            // Never all three at once: the region keeps at least one gateway.
            88..=90 if self.gws.iter().filter(|x| x.alive).count() > 1 && self.gws[g].alive => {
                self.kill(g)
            }
            91..=93 if !self.gws[g].alive => self.restart(g),
            94..=96 => {
                // a1's view of the membership catches up.
                self.view = self.gws.iter().map(|x| x.alive).collect();
            }
            97 => {
                let y = self.rng.random_range(0..B.len());
                self.cut_cluster_link(g, y);
            }
            98 => {
                let y = self.rng.random_range(0..B.len());
                self.heal_cluster_link(g, y);
            }
            99 if self.rng.random_bool(0.05) => {
                let y = self.rng.random_range(0..B.len());
                self.give_up(g, y);
            }
            99 => {
                let y = self.rng.random_range(0..B.len());
                self.past_grace(g, y);
            }
            _ => {}
        }
        let after = self.route().map(|l| self.links[l].to);
        if before.is_some() && after.is_some() && before != after {
            self.rehomes += 1;
        }
        Ok(())
    }

    fn settle(&mut self) -> Result<(), String> {
        for (x, y) in self.cut.clone() {
            self.heal_cluster_link(x, y);
        }
        for g in 0..B.len() {
            if !self.gws[g].alive {
                self.restart(g);
            }
        }
        self.view = vec![true; B.len()];
        for g in 0..B.len() {
            self.connect(g);
        }
        let mut reasks = 0;
        for _ in 0..10_000 {
            self.commit(usize::MAX);
            self.pump(32);
            let mut moved = false;
            for g in 0..B.len() {
                for p in 0..B.len() {
                    let before: usize = self.gws[p].relays.values().map(VecDeque::len).sum();
                    self.pump_held(g, p, 32);
                    let after: usize = self.gws[p].relays.values().map(VecDeque::len).sum();
                    moved |= after > before;
                    while self.gws[g].held_up.get(&p).is_some_and(|q| !q.is_empty()) {
                        self.held_answer(g, p);
                        moved = true;
                    }
                }
            }
            for li in 0..self.links.len() {
                while !self.links[li].broken && !self.links[li].down.is_empty() {
                    self.receive(li)?;
                    moved = true;
                }
            }
            for g in 0..B.len() {
                for from in 0..B.len() {
                    while self.gws[g].relays.get(&from).is_some_and(|q| !q.is_empty()) {
                        self.relay(g, from)?;
                        moved = true;
                    }
                }
                while !self.gws[g].writes.is_empty() {
                    self.record(g);
                    moved = true;
                }
            }
            for g in 0..B.len() {
                for from in 0..B.len() {
                    while self.gws[g]
                        .confirms
                        .get(&from)
                        .is_some_and(|q| !q.is_empty())
                    {
                        self.relay_confirmed(g, from);
                        moved = true;
                    }
                }
            }
            for li in 0..self.links.len() {
                while !self.links[li].broken && !self.links[li].up.is_empty() {
                    self.origin_receive(li)?;
                    moved = true;
                }
            }
            if !moved && reasks < 50 {
                // The gateway's chores: homes still holding relays back ask again (the first
                // request, or the resends, may have been lost with a link).
                reasks += 1;
                let alive: Vec<usize> = (0..B.len()).filter(|g| self.gws[*g].alive).collect();
                for g in alive {
                    for p in (0..B.len()).filter(|p| *p != g) {
                        moved |= self.ask_owed(g, p);
                    }
                }
                // A held queue whose frames were lost with a link starts again from its
                // oldest unconfirmed on the next link (the real pump's cursor does that).
                for (x, y) in self.cluster_links.keys().copied().collect::<Vec<_>>() {
                    if self.gws[x].own.depth(&format!("@{}", B[y])) > 0
                        || self.gws[y].own.depth(&format!("@{}", B[x])) > 0
                    {
                        self.end_cluster_link(x, y);
                        moved = true;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        for (gw, name) in self.gws.iter().zip(B) {
            if gw.killed_ever || gw.given_up_ever {
                continue;
            }
            let got: BTreeSet<u64> = gw.delivered.iter().copied().collect();
            let missing: Vec<u64> = self.acked.difference(&got).copied().collect();
            if !missing.is_empty() {
                return Err(self.fail(format!("{name} (never killed) is missing {missing:?}")));
            }
        }
        if self.outbox.depth("b") > 0 {
            let inboxes: Vec<String> = self.gws.iter().map(|g| format!("{:?}", g.inbox)).collect();
            return Err(self.fail(format!(
                "a1 still holds {} messages\n{}",
                self.outbox.depth("b"),
                inboxes.join("\n")
            )));
        }
        for (g, gw) in self.gws.iter().enumerate() {
            for (p, name) in B.iter().enumerate() {
                let depth = gw.own.depth(&format!("@{name}"));
                if p != g && depth > 0 {
                    return Err(
                        self.fail(format!("{} still holds {depth} relays for {name}", B[g]))
                    );
                }
            }
        }
        Ok(())
    }
}

#[test]
fn every_gateway_of_the_region_gets_every_acknowledged_message_once_across_re_homing() {
    let schedules: u64 = std::env::var("NEXUS_MODEL_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut rehomes = 0;
    let mut acked = 0;
    let (mut cuts, mut resent, mut held_cuts, mut held, mut late) = (0, 0, 0, 0, 0);
    for seed in 0..schedules {
        let mut w = World::new(seed);
        for g in 0..B.len() {
            w.connect(g);
        }
        let steps = 100 + (seed as usize % 300);
        let r = (0..steps)
            .try_for_each(|_| w.step())
            .and_then(|_| w.settle());
        if let Err(e) = r {
            panic!("seed {seed}: {e}");
        }
        rehomes += w.rehomes;
        acked += w.acked.len();
        cuts += w.cuts;
        resent += w.resent_relays;
        held_cuts += w.held_cuts;
        held += w.held_relays;
        late += w.late_held;
    }
    println!(
        "{acked} acknowledged messages, {rehomes} home changes, {cuts} cluster cuts ({held_cuts} past the grace), {resent} relays resent after a heal or hold, {held} held relays ({late} delivered late: their peer's home changed while they were held)"
    );
    assert!(resent > 0, "no cut ever needed a resend");
    assert!(held > 0, "no cut past the grace ever held a relay");
    assert!(
        rehomes > schedules,
        "the schedules rarely moved a1's home: {rehomes}"
    );
}
