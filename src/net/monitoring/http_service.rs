//! What each monitoring URL answers, on a connection whose first byte chose HTTP: `/metrics`
//! (Prometheus text), `/stats.json` (the same as JSON) and `/` (the live dashboard page, built
//! into the binary). The codec is `protocol::http`; this module only routes and renders.
//! `/metrics` and `/stats.json` grow with the queues: past one piece they are streamed
//! (`body_stream`).

use super::body_stream::{Body, BodyStream};
use super::snapshot::Snapshot;
use super::{prometheus, stats_json};
use crate::net::Shared;
use crate::protocol::http::{self, Method, ParsedHead, Response, Status};

/// What became of the request at the front of the input.
pub enum Answer {
    /// Its head is incomplete: nothing was answered.
    Incomplete,
    /// It asks for a page listing every queue, which the caller said may not be listed now
    /// (`listing_allowed`): nothing was answered; ask again once there is room.
    WaitForRoom,
    Served(Served),
}

/// What answering one request did.
pub struct Served {
    /// Input bytes the request took.
    pub consumed: usize,
    /// The connection closes once the response is sent.
    pub close: bool,
    /// The rest of a body being streamed: the response is not complete until it ends, and
    /// decides then whether the connection closes.
    pub stream: Option<Box<BodyStream>>,
}

/// The dashboard: one self-contained page that polls `/stats.json`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Answers the request at the front of `input` into `out`. `listing_allowed`: a page that
/// lists every queue (`/metrics`, `/stats.json`) may be rendered now; its snapshot and body
/// take memory that grows with the queues, so with many the caller first asks the output
/// budget for room.
pub fn serve(input: &[u8], shared: &Shared, out: &mut Vec<u8>, listing_allowed: bool) -> Answer {
    let done = |consumed, close| {
        Answer::Served(Served {
            consumed,
            close,
            stream: None,
        })
    };
    let (consumed, request) = match http::parse(input) {
        ParsedHead::NeedMore => return Answer::Incomplete,
        ParsedHead::Request { consumed, request } => (consumed, request),
        ParsedHead::Invalid(status) => {
            let body = format!("{} {}\n", status.code(), status.reason());
            http::encode(&text(status, body.as_bytes(), false, true, true), out);
            return done(input.len(), true);
        }
    };
    let close = !request.keep_alive;
    let head_only = request.method == Method::Head;
    let http11 = request.http11;
    if request.method == Method::Other {
        let body = b"405 Method Not Allowed: only GET and HEAD\n";
        let response = text(Status::MethodNotAllowed, body, head_only, close, http11);
        http::encode(&response, out);
        return done(consumed, close);
    }
    let (content_type, body): (&str, Vec<u8>) = match request.path {
        "/metrics" | "/stats.json" if !listing_allowed => return Answer::WaitForRoom,
        "/metrics" | "/stats.json" => {
            let (content_type, body) = match request.path {
                "/metrics" => (prometheus::CONTENT_TYPE, Body::Metrics),
                _ => (stats_json::CONTENT_TYPE, Body::StatsJson),
            };
            match BodyStream::new(body, Snapshot::take(shared)).first_piece() {
                Ok(body) => (content_type, body),
                Err(stream) => {
                    let stream = stream.start(content_type, head_only, close, http11, out);
                    let close = close || !http11;
                    return Answer::Served(Served {
                        consumed,
                        close: close && stream.is_none(),
                        stream,
                    });
                }
            }
        }
        "/" | "/index.html" => ("text/html; charset=utf-8", DASHBOARD.as_bytes().to_vec()),
        _ => {
            let body = b"404 Not Found: try /, /metrics or /stats.json\n";
            let response = text(Status::NotFound, body, head_only, close, http11);
            http::encode(&response, out);
            return done(consumed, close);
        }
    };
    let response = Response {
        status: Status::Ok,
        content_type,
        body: &body,
        head_only,
        close,
        http11,
    };
    http::encode(&response, out);
    done(consumed, close)
}

fn text(status: Status, body: &[u8], head_only: bool, close: bool, http11: bool) -> Response<'_> {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body,
        head_only,
        close,
        http11,
    }
}
