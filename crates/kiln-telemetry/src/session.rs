//! The trace of one session, built from the solver's events.

use std::collections::HashMap;
use std::time::SystemTime;

use kiln_graph::Key;
use kiln_solver::{Event, EventKind};
use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::traceparent;

/// Span names longer than this are cut.
const NAME_LIMIT: usize = 160;

/// Gives the `traceparent` of the caller's span, if any, when the session
/// span is created: at the first event, or when [`SessionTrace::traceparent`]
/// or [`SessionTrace::end`] is called first.
pub type ParentSource = Box<dyn FnMut() -> Option<String> + Send>;

/// The trace of one session: a session span, and a span per operation.
pub struct SessionTrace {
    tracer: SdkTracer,
    name: String,
    started: SystemTime,
    parent: ParentSource,
    session: Option<(Span, Context)>,
    running: HashMap<Key, Span>,
    /// Span of every operation seen, for links from the operations on top.
    spans: HashMap<Key, SpanContext>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    ran: i64,
    cached: i64,
    failed: i64,
}

impl SessionTrace {
    pub(crate) fn new(tracer: SdkTracer, name: String, parent: ParentSource) -> Self {
        Self {
            tracer,
            name,
            started: SystemTime::now(),
            parent,
            session: None,
            running: HashMap::new(),
            spans: HashMap::new(),
            counts: Counts::default(),
        }
    }

    /// The context operation spans hang from: the session span's, created
    /// on first use under the parent given by the [`ParentSource`].
    fn session(&mut self) -> Context {
        if let Some((_, cx)) = &self.session {
            return cx.clone();
        }
        let parent = match (self.parent)().as_deref().and_then(traceparent::parse) {
            Some(span) => Context::new().with_remote_span_context(span),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(self.name.clone())
            .with_kind(SpanKind::Server)
            .with_start_time(self.started)
            .start_with_context(&self.tracer, &parent);
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        self.session = Some((span, cx.clone()));
        cx
    }

    /// The `traceparent` naming the session span (to hand to a pipeline
    /// program, whose SDK then traces under it).
    pub fn traceparent(&mut self) -> String {
        let cx = self.session();
        traceparent::format(cx.span().span_context())
    }

    /// Adds what `ev` says to the trace.
    pub fn record(&mut self, ev: &Event) {
        let now = SystemTime::now();
        match &ev.kind {
            EventKind::Started => {
                let span = self.start(ev, now, false);
                self.running.insert(ev.node, span);
            }
            EventKind::Cached { duration } => {
                self.counts.cached += 1;
                let mut span = self.start(ev, now, true);
                span.set_attribute(KeyValue::new("kiln.duration_ms", duration.as_millis() as i64));
                span.end_with_timestamp(now);
            }
            EventKind::Done { duration } => {
                self.counts.ran += 1;
                let mut span = self.take(ev, now);
                span.set_attribute(KeyValue::new("kiln.duration_ms", duration.as_millis() as i64));
                span.end_with_timestamp(now);
            }
            EventKind::Failed { message } => {
                self.counts.failed += 1;
                let mut span = self.take(ev, now);
                let first = message.lines().next().unwrap_or_default().to_string();
                span.set_status(Status::error(first));
                span.end_with_timestamp(now);
            }
            EventKind::Notice { message } => {
                if let Some(span) = self.running.get_mut(&ev.node) {
                    span.add_event_with_timestamp("kiln.notice", now, vec![KeyValue::new("message", message.clone())]);
                }
            }
            EventKind::Output { .. } => {}
        }
    }

    /// The running span of `ev`'s operation (a new one if its start was missed).
    fn take(&mut self, ev: &Event, now: SystemTime) -> Span {
        let mut span = match self.running.remove(&ev.node) {
            Some(span) => span,
            None => self.start(ev, now, false),
        };
        if let Some(exec) = &ev.exec {
            span.set_attribute(KeyValue::new("process.exit.code", i64::from(exec.exit_code)));
        }
        span
    }

    fn start(&mut self, ev: &Event, now: SystemTime, cached: bool) -> Span {
        let parent = self.session();
        let mut attributes = vec![
            KeyValue::new("kiln.cached", cached),
            KeyValue::new("kiln.node", ev.node.to_string()),
        ];
        if let Some(image) = &ev.image {
            attributes.push(KeyValue::new("container.image.name", image.clone()));
        }
        if let Some(exec) = ev.exec.as_ref().filter(|_| cached) {
            attributes.push(KeyValue::new("process.exit.code", i64::from(exec.exit_code)));
        }
        let links = ev
            .inputs
            .iter()
            .filter_map(|k| self.spans.get(k))
            .map(|span| Link::with_context(span.clone()))
            .collect();
        let mut name = ev.description.clone();
        if name.len() > NAME_LIMIT {
            let mut cut = NAME_LIMIT;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name.truncate(cut);
            name.push('…');
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(now)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&self.tracer, &parent);
        self.spans.insert(ev.node, span.span_context().clone());
        span
    }

    /// Ends the session span (and the spans of operations still running,
    /// which were cut short).
    pub fn end(mut self) {
        let now = SystemTime::now();
        self.session();
        for (_, mut span) in self.running.drain() {
            span.set_status(Status::error("the session ended while it ran"));
            span.end_with_timestamp(now);
        }
        if let Some((mut span, _)) = self.session.take() {
            span.set_attribute(KeyValue::new("kiln.ops.ran", self.counts.ran));
            span.set_attribute(KeyValue::new("kiln.ops.cached", self.counts.cached));
            span.set_attribute(KeyValue::new("kiln.ops.failed", self.counts.failed));
            if self.counts.failed > 0 {
                span.set_status(Status::error(format!("{} operations failed", self.counts.failed)));
            }
            span.end_with_timestamp(now);
        }
    }

    /// Records `events` as they come, in a task of its own.
    pub fn follow(self, events: broadcast::Receiver<std::sync::Arc<Event>>) -> Following {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(follow(self, events, stopped));
        Following { stop, task }
    }
}

async fn follow(
    mut trace: SessionTrace,
    mut events: broadcast::Receiver<std::sync::Arc<Event>>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            ev = events.recv() => match ev {
                Ok(ev) => trace.record(&ev),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = (&mut stop).await;
                    break;
                }
            },
        }
    }
    loop {
        match events.try_recv() {
            Ok(ev) => trace.record(&ev),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    trace.end();
}

/// A session trace following events ([`SessionTrace::follow`]).
pub struct Following {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Following {
    /// Takes the events already sent, then ends the session's trace.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
