//! The loss the browser reports for our audio.
//!
//! A browser that also sends audio reports what it receives inside its Sender Reports (RFC 3550
//! §6.4.1 reception report blocks), not in Receiver Reports; rtc 0.21.1's statistics only read
//! the latter, and inbound RTCP does not reach the application on its own. This interceptor sits
//! in the chain, passes every packet on untouched, and keeps the last reported fraction lost for
//! our SSRC, whichever report carries it.

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// The last fraction lost the browser reported, shared between the interceptor and the peer.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReportedLoss(Arc<AtomicU32>);

/// Set when a report arrived; the low byte is the RFC 3550 fraction lost (of 256).
const SEEN: u32 = 0x100;

impl ReportedLoss {
    /// 0.0 to 1.0; `None` before the first report.
    pub(crate) fn get(&self) -> Option<f64> {
        let v = self.0.load(Ordering::Relaxed);
        (v & SEEN != 0).then(|| f64::from(v & 0xff) / 256.0)
    }

    fn set(&self, fraction_lost: u8) {
        self.0
            .store(SEEN | u32::from(fraction_lost), Ordering::Relaxed);
    }
}

/// Watches inbound RTCP for reception reports about `ssrc`.
pub(crate) struct LossWatch {
    ssrc: u32,
    loss: ReportedLoss,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl LossWatch {
    pub(crate) fn new(ssrc: u32, loss: ReportedLoss) -> LossWatch {
        LossWatch {
            ssrc,
            loss,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    fn observe(&self, reports: &[ReceptionReport]) {
        if let Some(r) = reports.iter().find(|r| r.ssrc == self.ssrc) {
            self.loss.set(r.fraction_lost);
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for LossWatch {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for p in packets {
                let any = p.as_any();
                if let Some(sr) = any.downcast_ref::<SenderReport>() {
                    self.observe(&sr.reports);
                } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    self.observe(&rr.reports);
                }
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for LossWatch {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
