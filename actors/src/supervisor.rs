//! The supervisor: the call registry, and the one place calls are created and ended.
//!
//! It lives on the main arbiter. For each offer it mints an unguessable call id, picks the least
//! loaded media worker, starts a [`CallActor`] there and asks it to answer; answering runs on the
//! worker, so the supervisor keeps taking messages meanwhile. Hangups are routed by call id;
//! a call's [`CallEvent::Ended`] removes it from the registry. On shutdown it lets its own calls
//! (the registry, not a process-wide gauge: another server in the same process is not its
//! business) run until they end or the grace period is over, then ends the rest with `shutdown`
//! and waits (bounded) until each is released.
//!
//! Failure: a call that dies without reporting (its worker panicked mid-teardown) would stay in
//! the registry; the registry therefore also drops entries whose actor is no longer alive when
//! it is read.

use crate::call::{
    CallActor, CallEvent, CallServices, CallSettings, End, EndReason, Negotiate, Offer, PatchIce,
    PatchReply,
};
use crate::trace_msg;
use crate::workers::Workers;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use voicegate_core::admission::SourceKey;
use voicegate_core::call_id::CallId;
use voicegate_core::untrusted::shown;
use voicegate_media::{PatchError, PeerError};

/// How many recently ended calls the registry remembers, with their reasons.
const RECENT_ENDS: usize = 256;

/// Longest a shutdown waits for calls to release.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How often a draining shutdown looks whether its calls have ended.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The actor.
pub struct Supervisor {
    /// Per-call settings.
    settings: Arc<CallSettings>,
    /// What calls share.
    services: CallServices,
    /// Where calls run.
    workers: Workers,
    /// Live calls.
    calls: HashMap<CallId, Addr<CallActor>>,
    /// Where each live call came from (calls whose offer named a source).
    sources: HashMap<CallId, SourceKey>,
    /// Most calls in progress from one source (0: no limit).
    calls_per_source: usize,
    /// Most calls in progress from one IPv6 /48 ([`SourceKey::prefix`]; 0: no limit).
    calls_per_prefix: usize,
    /// The last calls that ended and why, newest last.
    recent_ends: std::collections::VecDeque<(CallId, String)>,
    /// No new calls once set.
    shutting_down: bool,
    /// Most calls at once (0: no limit).
    max_calls: usize,
}

impl Supervisor {
    /// Limits calls in progress from one source (see [`SourceKey`]) to `n` (0: no limit).
    pub fn with_calls_per_source(mut self, n: usize) -> Self {
        self.calls_per_source = n;
        self
    }

    /// Limits calls in progress from one IPv6 /48 (see [`SourceKey::prefix`]), all its sources
    /// together, to `n` (0: no limit).
    pub fn with_calls_per_prefix(mut self, n: usize) -> Self {
        self.calls_per_prefix = n;
        self
    }

    /// How many calls are live, after dropping the entries of calls whose actor is gone (see the
    /// module doc).
    fn live_calls(&mut self) -> usize {
        self.calls.retain(|_, a| a.connected());
        let calls = &self.calls;
        self.sources.retain(|id, _| calls.contains_key(id));
        self.calls.len()
    }

    /// Resolves once the registry holds no live call, or at `deadline`. Calls leave the registry
    /// as they report [`CallEvent::Ended`] (handled between these looks, on this actor); a call
    /// that died without reporting is dropped by [`Supervisor::live_calls`].
    fn drain(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> fut::LocalBoxActorFuture<Supervisor, ()> {
        if self.live_calls() == 0 || tokio::time::Instant::now() >= deadline {
            return Box::pin(fut::ready(()));
        }
        Box::pin(
            fut::wrap_future::<_, Supervisor>(actix_rt::time::sleep(DRAIN_POLL))
                .then(move |(), act, _ctx| act.drain(deadline)),
        )
    }

    /// Forgets a call that ended or is being ended.
    fn forget(&mut self, call_id: &CallId) -> Option<Addr<CallActor>> {
        self.sources.remove(call_id);
        self.calls.remove(call_id)
    }

    /// A supervisor placing calls on `workers`. Must run inside an actix system.
    pub fn new(
        settings: CallSettings,
        services: CallServices,
        workers: Workers,
        max_calls: usize,
    ) -> Self {
        Supervisor {
            settings: Arc::new(settings),
            services,
            workers,
            calls: HashMap::new(),
            sources: HashMap::new(),
            calls_per_source: 0,
            calls_per_prefix: 0,
            recent_ends: std::collections::VecDeque::with_capacity(RECENT_ENDS),
            shutting_down: false,
            max_calls,
        }
    }
}

/// A call's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The new call's id.
    pub call_id: CallId,
    /// Our SDP answer with candidates.
    pub sdp: String,
}

/// Why an offer did not become a call.
#[derive(Debug, thiserror::Error)]
pub enum PlaceCallError {
    /// The WebRTC stack refused the offer (a malformed or unsupported offer: the caller's fault).
    #[error("{0}")]
    Negotiation(#[source] PeerError),
    /// Not taking calls.
    #[error("shutting down")]
    ShuttingDown,
    /// `calls.max` calls are in progress.
    #[error("at capacity")]
    Full,
    /// The offer's source already has `admission.calls_per_ip` calls in progress.
    #[error("too many calls from this address")]
    SourceBusy,
    /// The offer's IPv6 /48 already has `admission.calls_per_prefix` calls in progress.
    #[error("too many calls from this network")]
    PrefixBusy,
    /// Our side failed; the detail is for the log, not for the caller.
    #[error("{0}")]
    Internal(#[from] SetupError),
}

/// How setting up a call failed on our side.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The OS had no randomness for an unguessable call id.
    #[error("no randomness for a call id: {0}")]
    Randomness(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Building the peer connection or its answer failed.
    #[error("{0}")]
    Peer(#[source] PeerError),
    /// The call actor was gone before it answered (it panicked, or its worker stopped).
    #[error("call actor: {0}")]
    CallActor(#[source] MailboxError),
}

/// Start a call from a validated offer.
#[derive(Message)]
#[rtype(result = "Result<Answer, PlaceCallError>")]
pub struct PlaceCall {
    /// The offer.
    pub offer: Offer,
}

/// End a call if it exists. Resolves once it is released.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HangUp {
    /// Which call.
    pub call_id: CallId,
    /// Why.
    pub reason: EndReason,
}

/// Apply a `PATCH` (trickle or ICE restart) to a call if it exists. `None`: no such call.
#[derive(Debug, Message)]
#[rtype(result = "Option<Result<PatchReply, PatchError>>")]
pub struct Patch {
    /// Which call.
    pub call_id: CallId,
    /// What to apply.
    pub patch: PatchIce,
}

/// Stop taking calls, let the live ones go on for up to `grace`, then end what is left with
/// `shutdown`. Resolves once every call is released (bounded).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// How long live calls may continue.
    pub grace: Duration,
}

/// What is running, for tests and operators.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Ids of live calls.
    pub calls: Vec<CallId>,
    /// Calls per media worker.
    pub worker_loads: Vec<usize>,
    /// Recently ended calls and their end reasons, oldest first.
    pub recent_ends: Vec<(CallId, String)>,
}

/// Ask for a [`Snapshot`].
#[derive(Debug, Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.workers.stop();
    }
}

impl Handler<PlaceCall> for Supervisor {
    type Result = ResponseActFuture<Self, Result<Answer, PlaceCallError>>;

    fn handle(&mut self, msg: PlaceCall, ctx: &mut Self::Context) -> Self::Result {
        if self.shutting_down {
            return Box::pin(fut::ready(Err(PlaceCallError::ShuttingDown)));
        }
        // Checked before anything is built for the call: a refused offer costs nothing. The
        // registry (not the live-actor gauge, which counts a call only once its actor has started
        // on its worker) is updated in this same handler, so concurrent offers cannot overshoot.
        if self.max_calls > 0 && self.calls.len() >= self.max_calls {
            crate::metrics::metrics().calls_refused_full.inc();
            return Box::pin(fut::ready(Err(PlaceCallError::Full)));
        }
        let source = msg.offer.client.ip.map(SourceKey::of);
        if let Some(key) = source
            && self.calls_per_source > 0
            && self.sources.values().filter(|k| **k == key).count() >= self.calls_per_source
        {
            crate::metrics::metrics().limit_hit(crate::metrics::Limit::CallsPerIp);
            return Box::pin(fut::ready(Err(PlaceCallError::SourceBusy)));
        }
        if let Some(prefix) = source.and_then(SourceKey::prefix)
            && self.calls_per_prefix > 0
            && self
                .sources
                .values()
                .filter(|k| k.prefix() == Some(prefix))
                .count()
                >= self.calls_per_prefix
        {
            crate::metrics::metrics().limit_hit(crate::metrics::Limit::CallsPerPrefix);
            return Box::pin(fut::ready(Err(PlaceCallError::PrefixBusy)));
        }
        let received = std::time::Instant::now();
        let call_id = match CallId::generate(&self.settings.id_prefix, Some(&self.settings.node_id))
        {
            Ok(id) => id,
            Err(e) => {
                let e = SetupError::Randomness(Box::new(e));
                return Box::pin(fut::ready(Err(e.into())));
            }
        };
        let span = tracing::info_span!("call", call_id = %call_id);
        {
            let _e = span.enter();
            tracing::info!(
                mode = ?msg.offer.mode,
                client = %msg.offer.client.addr,
                user_agent = %shown(msg.offer.client.user_agent.as_deref().unwrap_or("")),
                candidates = msg.offer.summary.candidates,
                caller = msg.offer.caller.as_deref().map(shown).map(tracing::field::display),
                max_duration_s = msg.offer.max_duration.map(|d| d.as_secs()),
                "offer received"
            );
        }
        let (arbiter, lease) = self.workers.pick();
        let settings = self.settings.clone();
        let services = self.services.clone();
        let parent = ctx.address().recipient();
        let id = call_id.clone();
        let mut offer = msg.offer;
        let sdp = std::mem::take(&mut offer.sdp);
        let call_offer = offer.clone();
        let call = CallActor::start_in_arbiter(&arbiter, move |_| {
            CallActor::new(id, span, settings, services, parent, call_offer, lease)
        });
        self.calls.insert(call_id.clone(), call.clone());
        if let Some(key) = source {
            self.sources.insert(call_id.clone(), key);
        }
        trace_msg!(call_id, "supervisor" => "call", "Negotiate");
        offer.sdp = sdp;
        let fut = call.send(Negotiate { offer });
        Box::pin(fut.into_actor(self).map(move |res, _act, _ctx| match res {
            Ok(Ok(sdp)) => {
                crate::metrics::metrics()
                    .offer_answer
                    .observe(received.elapsed());
                Ok(Answer { call_id, sdp })
            }
            Ok(Err(e)) if e.is_negotiation() => Err(PlaceCallError::Negotiation(e)),
            Ok(Err(e)) => Err(SetupError::Peer(e).into()),
            Err(e) => Err(SetupError::CallActor(e).into()),
        }))
    }
}

impl Handler<HangUp> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: HangUp, _ctx: &mut Self::Context) -> Self::Result {
        // Removing first makes a repeated hangup a no-op at once.
        let Some(call) = self.forget(&msg.call_id) else {
            tracing::debug!(call_id = %msg.call_id, "hangup for an unknown or ended call");
            return Box::pin(async {});
        };
        trace_msg!(msg.call_id, "supervisor" => "call", "End", "{}", msg.reason);
        Box::pin(async move {
            // Resolves when the call handled it; the mailbox closing (the call stopped) is the
            // same outcome.
            let _ = call.send(End { reason: msg.reason }).await;
            // The call stops after releasing; wait until it has.
            while call.connected() {
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }
}

impl Handler<Patch> for Supervisor {
    type Result = ResponseFuture<Option<Result<PatchReply, PatchError>>>;

    fn handle(&mut self, msg: Patch, _ctx: &mut Self::Context) -> Self::Result {
        let Some(call) = self.calls.get(&msg.call_id).cloned() else {
            return Box::pin(async { None });
        };
        trace_msg!(msg.call_id, "supervisor" => "call", "PatchIce", "{} candidates", msg.patch.frag.candidates.len());
        // A call that stops meanwhile is gone as far as the caller can tell.
        Box::pin(async move { call.send(msg.patch).await.ok() })
    }
}

impl Handler<CallEvent> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: CallEvent, _ctx: &mut Self::Context) {
        match msg {
            CallEvent::Ended { call_id, reason } => {
                trace_msg!(call_id, "call" => "supervisor", "CallEvent::Ended", "{reason}");
                self.forget(&call_id);
                tracing::debug!(%call_id, %reason, live = self.calls.len(), "call removed");
                if self.recent_ends.len() == RECENT_ENDS {
                    self.recent_ends.pop_front();
                }
                self.recent_ends
                    .push_back((call_id, reason.as_str().to_owned()));
            }
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        tracing::info!(
            calls = self.live_calls(),
            grace_ms = msg.grace.as_millis() as u64,
            "draining: no new calls"
        );
        let deadline = tokio::time::Instant::now() + msg.grace;
        // Let calls end by themselves until the grace period is over...
        Box::pin(self.drain(deadline).then(|(), act, _ctx| {
            // ...then end the rest.
            act.sources.clear();
            let calls: Vec<Addr<CallActor>> = act.calls.drain().map(|(_, a)| a).collect();
            if !calls.is_empty() {
                tracing::info!(calls = calls.len(), "grace period over: ending calls");
            }
            async move {
                let ends = calls.iter().map(|c| {
                    c.send(End {
                        reason: EndReason::Shutdown,
                    })
                });
                let _ = futures_util::future::join_all(ends).await;
                let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
                while calls.iter().any(|c| c.connected()) && tokio::time::Instant::now() < deadline
                {
                    actix_rt::time::sleep(Duration::from_millis(10)).await;
                }
            }
            .into_actor(act)
        }))
    }
}

impl Handler<GetSnapshot> for Supervisor {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        self.live_calls();
        MessageResult(Snapshot {
            calls: self.calls.keys().cloned().collect(),
            worker_loads: self.workers.loads(),
            recent_ends: self.recent_ends.iter().cloned().collect(),
        })
    }
}

/// Test-only: make a child of a call panic. Resolves to whether the call and child existed.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct InjectFault {
    /// Which call.
    pub call_id: CallId,
    /// Which child.
    pub fault: crate::call::Fault,
}

#[cfg(feature = "test-hooks")]
impl Handler<InjectFault> for Supervisor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: InjectFault, _ctx: &mut Self::Context) -> Self::Result {
        let call = self.calls.get(&msg.call_id).cloned();
        Box::pin(async move {
            match call {
                Some(c) => c
                    .send(crate::call::InjectFault(msg.fault))
                    .await
                    .unwrap_or(false),
                None => false,
            }
        })
    }
}
