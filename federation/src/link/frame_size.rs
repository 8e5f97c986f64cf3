//! The sizes of a link's frames and writes, shared by the framing ([`super::wire`]) and
//! the batch compression ([`super::compression`]) so that neither imports the other's
//! constants.

/// Largest frame accepted from a peer: room for the largest payload a gateway can be
/// configured to accept (64 MiB) plus its envelope.
pub const MAX_FRAME: usize = 80 << 20;
/// The data writer coalesces queued frames into writes of up to this many bytes. quinn keeps
/// every write as one segment of the stream's send buffer and finds the bytes of each packet
/// it builds by scanning those segments from the oldest unacknowledged one, so one write per
/// small frame made that scan (tens of thousands of segments with a WAN round trip's worth of
/// data in flight) the sender's main cost, and under overload the link starved for CPU.
pub const WRITE_BATCH: usize = 64 << 10;
