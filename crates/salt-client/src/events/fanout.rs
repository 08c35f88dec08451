//! Fan-out: waiters registered by jid, their bounded queues, and the one
//! dispatch every event goes through.

#[allow(unused_imports)]
use super::*;

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) inbox: Arc<Inbox>,
    /// How this waiter has its returns shaped, if it asked
    /// ([`JidSubscription::shape_returns`]). Here, not in the inbox: every
    /// waiting call has an inbox, and a jid's list of waiters is allocated
    /// for one.
    pub(super) shaper: Option<Shaper>,
}

impl Drop for Waiter {
    /// The bus no longer delivers to this waiter: its subscription's `recv`
    /// ends once the inbox is empty.
    fn drop(&mut self) {
        self.inbox.closed.store(true, Ordering::Release);
        self.inbox.arrived.notify_one();
    }
}

/// A return the bus shaped for its waiter the moment it arrived (see
/// [`JidSubscription::shape_returns`]): the minion id, and the text the
/// waiter's answer holds for it. The event itself (its frame, tag and
/// decoded data) is gone by then.
#[derive(Debug)]
pub struct Shaped {
    /// The id's bytes, then the text's.
    bytes: Bytes,
    id_len: u32,
}

impl Shaped {
    /// The return of `id`, its text what `write` appends.
    pub fn new(id: &str, write: impl FnOnce(&mut Vec<u8>)) -> Option<Self> {
        let id_len = u32::try_from(id.len()).ok()?;
        let mut bytes = id.as_bytes().to_vec();
        write(&mut bytes);
        Some(Shaped {
            bytes: Bytes::from(bytes),
            id_len,
        })
    }

    /// The minion that returned.
    pub fn id(&self) -> &str {
        // Written from a `&str` in `new`.
        std::str::from_utf8(&self.bytes[..self.id_len as usize]).unwrap_or_default()
    }

    /// Its text, without a copy.
    pub fn into_text(self) -> Bytes {
        self.bytes.slice(self.id_len as usize..)
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// What a jid waiter receives: an event, or a return shaped on arrival.
#[derive(Debug)]
pub enum Delivery {
    Event(Arc<Event>),
    Shaped(Shaped),
}

/// How a waiter has its returns shaped on arrival: `None` leaves the event
/// to be queued as it is.
pub type Shaper = Box<dyn Fn(&Event) -> Option<Shaped> + Send + Sync>;

/// What a shaped return is charged besides its id and text: its header in
/// the run it is queued in.
pub(super) const SHAPED_OVERHEAD: usize = 8;

/// Shaped returns queued one after another are appended to one buffer
/// (`Queued::Returns`), up to this many bytes a buffer: a job whose
/// 10,000 returns arrive before its waiter reads them then queues their
/// text and a header each, not 10,000 allocations and queue slots.
pub(super) const RUN_BYTES: usize = 16 << 10;

/// An entry of a waiter's queue.
#[derive(Debug)]
pub(super) enum Queued {
    Event(Arc<Event>),
    /// A run of shaped returns, each `[id length][text length]` (`u32`,
    /// little-endian), the id, then the text.
    Returns(BytesMut),
}

impl Queued {
    /// Append `shaped` to the run at the back of `queue`, or start one.
    fn push_shaped(queue: &mut VecDeque<Queued>, shaped: &Shaped) {
        let len = SHAPED_OVERHEAD + shaped.len();
        // A run grows as a `Vec` does while it is small (a call with a few
        // returns pays for those); once one is full, the next has a fixed
        // room.
        let (fits, full) = match queue.back() {
            Some(Queued::Returns(run)) if run.capacity() < RUN_BYTES => (true, false),
            Some(Queued::Returns(run)) => (run.capacity() - run.len() >= len, true),
            _ => (false, false),
        };
        if !fits {
            let room = if full { RUN_BYTES.max(len) } else { len };
            queue.push_back(Queued::Returns(BytesMut::with_capacity(room)));
        }
        let Some(Queued::Returns(run)) = queue.back_mut() else {
            return; // a run is at the back: found or pushed above
        };
        // Within `u32`: `Shaped::new` checked the id, and the return bound
        // (`JID_RETURN_BYTES`) admitted the whole.
        run.extend_from_slice(&shaped.id_len.to_le_bytes());
        run.extend_from_slice(&((shaped.len() - shaped.id_len as usize) as u32).to_le_bytes());
        run.extend_from_slice(&shaped.bytes);
    }

    /// Take the first return of a run (written by `push_shaped`).
    fn pop_shaped(run: &mut BytesMut) -> Shaped {
        let word = |at: usize| u32::from_le_bytes([run[at], run[at + 1], run[at + 2], run[at + 3]]);
        let (id_len, text_len) = (word(0), word(4));
        let mut record = run.split_to(SHAPED_OVERHEAD + id_len as usize + text_len as usize);
        Shaped {
            bytes: record.split_off(SHAPED_OVERHEAD).freeze(),
            id_len,
        }
    }
}

/// A jid waiter's queue: the events dispatched to it and not yet received,
/// within its bounds.
///
/// A queue and a `Notify` rather than a tokio `mpsc` channel: every
/// synchronous call waiting for its job has one, and a channel allocates
/// ~780 bytes up front (its first block of 32 slots and cache-padded
/// counters) where this takes ~150, and a few pointers once returns arrive.
#[derive(Default)]
pub(super) struct Inbox {
    pub(super) events: Mutex<VecDeque<Queued>>,
    arrived: tokio::sync::Notify,
    /// The waiter is gone from the bus (unregistered, or the bus dropped).
    closed: AtomicBool,
    /// The bus lost its subscription while the waiter was registered (or
    /// was not connected when it registered): events may have been missed.
    pub(super) bus_lost: AtomicBool,
    // 32-bit: every waiting call has an inbox, and both bounds fit.
    pub(super) others: AtomicU32,
    pub(super) return_bytes: AtomicU32,
    pub(super) lost: AtomicBool,
    pub(super) lost_returns: AtomicBool,
}

impl Inbox {
    /// Queue `event` for the waiter, if it fits its bounds; a return is
    /// shaped first with `shaper`, the waiter's.
    pub(super) fn deliver(&self, event: &Arc<Event>, shaper: Option<&Shaper>) {
        let shaped = match shaper {
            Some(shape) if is_return_tag(&event.tag) => shape(event),
            _ => None,
        };
        match shaped {
            Some(s) if self.admit_return(Self::shaped_cost(&s)) => {
                let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
                Queued::push_shaped(&mut events, &s);
            }
            Some(_) => return,
            None if self.admit(event) => self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(Queued::Event(event.clone())),
            None => return,
        }
        self.arrived.notify_one();
    }

    /// The next queued delivery; `None` once the waiter is gone from the
    /// bus and nothing is left.
    async fn next(&self) -> Option<Delivery> {
        loop {
            // `closed` and `bus_lost` are read before the queue: what was
            // delivered before either is still received.
            let closed =
                self.closed.load(Ordering::Acquire) || self.bus_lost.load(Ordering::Acquire);
            let mut emptied = VecDeque::new();
            let delivery = {
                let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
                let delivery = match events.pop_front() {
                    Some(Queued::Returns(mut run)) => {
                        let shaped = Queued::pop_shaped(&mut run);
                        if !run.is_empty() {
                            events.push_front(Queued::Returns(run));
                        }
                        Some(Delivery::Shaped(shaped))
                    }
                    Some(Queued::Event(ev)) => Some(Delivery::Event(ev)),
                    None => None,
                };
                if events.is_empty() {
                    // Its room is given back (freed below, outside the
                    // lock): a waiter mostly waits with nothing queued, and
                    // every waiting call has one.
                    std::mem::swap(&mut *events, &mut emptied);
                }
                delivery
            };
            drop(emptied);
            match delivery {
                Some(d) => {
                    match &d {
                        Delivery::Event(ev) => self.release(ev),
                        Delivery::Shaped(s) => {
                            self.return_bytes
                                .fetch_sub(Self::shaped_cost(s) as u32, Ordering::Relaxed);
                        }
                    }
                    return Some(d);
                }
                None if closed => return None,
                // A delivery between the check and here left a permit:
                // `notified` returns at once.
                None => self.arrived.notified().await,
            }
        }
    }

    /// The bus lost its subscription: end the waiter's `recv` once what
    /// was queued is received.
    pub(super) fn mark_bus_lost(&self) {
        self.bus_lost.store(true, Ordering::Release);
        self.arrived.notify_one();
    }

    fn shaped_cost(shaped: &Shaped) -> usize {
        shaped.len() + SHAPED_OVERHEAD
    }

    /// What `event` is charged against the bounds: (others, return bytes).
    pub(super) fn cost(event: &Event) -> (usize, usize) {
        if is_return_tag(&event.tag) {
            (0, event.raw_len() + event.tag.len() + RETURN_OVERHEAD)
        } else {
            (1, 0)
        }
    }

    /// Reserve room for `event`; `false` (and the waiter marked as having
    /// lost an event) when it does not fit.
    pub(super) fn admit(&self, event: &Event) -> bool {
        match Self::cost(event) {
            (0, bytes) => self.admit_return(bytes),
            (others, _) => {
                let fits = self
                    .others
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                        let total = used as usize + others;
                        (total <= JID_QUEUE).then_some(total as u32)
                    })
                    .is_ok();
                if !fits {
                    self.lost.store(true, Ordering::Relaxed);
                }
                fits
            }
        }
    }

    /// Reserve `bytes` of the return bound; `false` (and the waiter marked
    /// as having lost a return) when they do not fit.
    fn admit_return(&self, bytes: usize) -> bool {
        let fits = self
            .return_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let total = (used as usize).saturating_add(bytes);
                (total <= JID_RETURN_BYTES).then_some(total as u32)
            })
            .is_ok();
        if !fits {
            self.lost.store(true, Ordering::Relaxed);
            self.lost_returns.store(true, Ordering::Relaxed);
        }
        fits
    }

    /// Give back the room of an event the waiter received.
    pub(super) fn release(&self, event: &Event) {
        // Admitted, so within the bounds: the casts are exact.
        let (others, bytes) = Self::cost(event);
        self.others.fetch_sub(others as u32, Ordering::Relaxed);
        self.return_bytes.fetch_sub(bytes as u32, Ordering::Relaxed);
    }
}

/// Whether `tag` is a job, runner or wheel return
/// (`salt/job/<jid>/ret/<id>`, `salt/run/<jid>/ret`, `salt/wheel/<jid>/ret`).
pub(super) fn is_return_tag(tag: &str) -> bool {
    let mut parts = tag.splitn(5, '/');
    matches!(
        (parts.next(), parts.next(), parts.nth(1)),
        (Some("salt"), Some("job" | "run" | "wheel"), Some("ret"))
    )
}

#[derive(Default)]
pub(super) struct State {
    pub(super) by_jid: HashMap<String, Vec<Waiter>>,
    /// Recent runner/wheel events in arrival order (for eviction) ...
    pub(super) recent: VecDeque<Arc<Event>>,
    /// ... and the same events by jid, so registering a waiter is a lookup,
    /// not a scan (every `local` call registers one).
    pub(super) recent_by_jid: HashMap<String, Vec<Arc<Event>>>,
    pub(super) recent_bytes: usize,
}

pub(super) struct Shared {
    pub(super) sub: Endpoint,
    pub(super) pull: Endpoint,
    pub(super) state: Mutex<State>,
    pub(super) stream: broadcast::Sender<Arc<Event>>,
    pub(super) connected: watch::Sender<bool>,
    pub(super) next_id: AtomicU64,
    /// 0 unknown, 1 `_stamp` without offset (≤3007), 2 with `+00:00` (3008+).
    pub(super) stamp_style: AtomicU8,
    pub(super) pub_framing: Mutex<Option<Framing>>,
    pub(super) pull_framing: tokio::sync::Mutex<Option<Framing>>,
    pub(super) pusher: tokio::sync::Mutex<Option<(u64, Box<dyn Stream>)>>,
    pub(super) generation: AtomicU64,
    pub(super) events_seen: AtomicU64,
    /// Callers of [`EventBus::next_event`], and whether there are any.
    pub(super) next_event: Mutex<Vec<tokio::sync::oneshot::Sender<Arc<Event>>>>,
    pub(super) next_wanted: AtomicBool,
}

/// The events of one jid, in arrival order. Dropping it unregisters.
pub struct JidSubscription {
    pub(super) id: u64,
    pub(super) jid: String,
    pub(super) queue: Arc<Inbox>,
    pub(super) shared: Arc<Shared>,
}

impl JidSubscription {
    /// The next event, or `None` when the bus handle is gone.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        loop {
            // Shaped returns only reach a waiter that asked for them
            // (`shape_returns`), and such a waiter reads `recv_delivery`.
            if let Delivery::Event(ev) = self.queue.next().await? {
                return Some(ev);
            }
        }
    }

    /// The next event or shaped return, or `None` when the bus handle is
    /// gone.
    pub async fn recv_delivery(&mut self) -> Option<Delivery> {
        self.queue.next().await
    }

    /// Have the bus shape this waiter's returns (`.../ret/...` events) with
    /// `shaper` as they arrive, on the bus's task, and queue what it makes
    /// of them instead of the events: a job whose 10,000 returns arrive at
    /// once then has their answer's entries queued, not 10,000 frames and
    /// events. Returns queued before this call stay events. `false` if a
    /// shaper was already set.
    pub fn shape_returns(&self, shaper: Shaper) -> bool {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let waiter = state
            .by_jid
            .get_mut(&self.jid)
            .and_then(|list| list.iter_mut().find(|w| w.id == self.id));
        match waiter {
            Some(w) if w.shaper.is_none() => {
                w.shaper = Some(shaper);
                true
            }
            _ => false,
        }
    }

    /// Whether the bus lost its subscription to the master while this
    /// waiter was registered (or was not connected when it registered):
    /// `recv` then ends once what was queued is received, and events of
    /// the jid may never arrive.
    pub fn bus_lost(&self) -> bool {
        self.queue.bus_lost.load(Ordering::Acquire)
    }

    /// Whether any event for this jid was dropped because the queue was full.
    pub fn lost_events(&self) -> bool {
        self.queue.lost.load(Ordering::Relaxed)
    }

    /// Whether any return (`.../ret/...`) for this jid was dropped: only
    /// when [`JID_RETURN_BYTES`] of returns were waiting unread.
    pub fn lost_returns(&self) -> bool {
        self.queue.lost_returns.load(Ordering::Relaxed)
    }

    /// The jid.
    pub fn jid(&self) -> &str {
        &self.jid
    }
}

impl Drop for JidSubscription {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = state.by_jid.get_mut(&self.jid) {
            list.retain(|w| w.id != self.id);
            if list.is_empty() {
                state.by_jid.remove(&self.jid);
            }
        }
    }
}

/// The bus lost its subscription: every registered waiter is told, after
/// `connected` is false, so that a waiter registering meanwhile either is
/// in the list or sees it false ([`EventBus::subscribe_jid`]).
pub(super) fn mark_bus_lost(shared: &Shared) {
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    for w in state.by_jid.values().flatten() {
        w.inbox.mark_bus_lost();
    }
}

pub(super) fn dispatch(shared: &Shared, event: Event) {
    shared.events_seen.fetch_add(1, Ordering::Relaxed);
    let event = Arc::new(event);
    if let Some(jid) = event.jid() {
        let cache = event.tag.starts_with("salt/run/") || event.tag.starts_with("salt/wheel/");
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        // A subscription unregisters (and empties its list) in its own `Drop`.
        for w in state.by_jid.get(jid).into_iter().flatten() {
            w.inbox.deliver(&event, w.shaper.as_ref());
        }
        if cache && event.raw_len() < RECENT_BYTES / 4 {
            state.recent_bytes += event.raw_len();
            state.recent.push_back(event.clone());
            state
                .recent_by_jid
                .entry(jid.to_owned())
                .or_default()
                .push(event.clone());
            while state.recent.len() > RECENT_EVENTS || state.recent_bytes > RECENT_BYTES {
                let Some(old) = state.recent.pop_front() else {
                    break;
                };
                state.recent_bytes -= old.raw_len();
                if let Some(old_jid) = old.jid() {
                    if let Some(list) = state.recent_by_jid.get_mut(old_jid) {
                        // The oldest event of a jid is the first in its list.
                        if !list.is_empty() {
                            list.remove(0);
                        }
                        if list.is_empty() {
                            state.recent_by_jid.remove(old_jid);
                        }
                    }
                }
            }
        }
    }
    // A load first: a swap would write to the flag for every event.
    if shared.next_wanted.load(Ordering::Acquire)
        && shared.next_wanted.swap(false, Ordering::AcqRel)
    {
        let waiting =
            std::mem::take(&mut *shared.next_event.lock().unwrap_or_else(|p| p.into_inner()));
        for tx in waiting {
            let _ = tx.send(event.clone());
        }
    }
    if shared.stream.receiver_count() > 0 {
        let _ = shared.stream.send(event);
    }
}
