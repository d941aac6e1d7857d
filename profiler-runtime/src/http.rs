//! `HttpServer`: Go's `/debug/pprof` paths, served from memory on threads of its own.
//!
//! GET-only HTTP/1.1 with `Connection: close`, written on std sockets because the small
//! blocking servers available (tiny_http 0.12) have no per-connection time-outs and stop
//! accepting after one accept error, and hyper would force an async runtime on the host. The
//! request head is parsed by httparse and must arrive whole within [`HEAD_DEADLINE`], however
//! slowly it trickles; a body up to [`MAX_BODY`] is drained, a larger one refused. At most
//! [`MAX_CONNECTIONS`] connections are served at once (others get 503) and at most
//! [`MAX_WINDOWS`] profile windows run at once (others get 429); a window whose client leaves is
//! cancelled at once and frees its slot. `/debug/pprof/profile` holds CPU samples only, as Go's
//! CPU profile; wall-clock windows are served apart at `/debug/fgprof`. Profiles come from the
//! dump thread through commands; no path from a request reaches the file system, and nothing
//! here touches the signal handler.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::aggregate::View;
use crate::diagnostics::error;
use crate::dump::{Command, HeapDefault};
use crate::pprof::{encode_gz, Profile};
use crate::runtime::Runtime;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Profile windows (`/debug/pprof/profile`, `/debug/pprof/flamegraph`) in flight at once.
pub const MAX_WINDOWS: usize = 4;
/// Longest time for a whole request head (and a body to drain), however slowly it trickles in.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Longest wait for a client to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted in a request head.
const MAX_HEADERS: usize = 32;
/// Largest request body accepted (and drained); a larger one gets 413.
const MAX_BODY: u64 = 8 * 1024;
/// Longest profile window, in seconds (`seconds=` above it gets 400).
pub const MAX_WINDOW_SECONDS: u64 = 300;
/// Window length when `seconds` is missing, unparsable or not above zero (as Go's handler).
const DEFAULT_WINDOW_SECONDS: u64 = 30;
/// Longest wait for the dump thread to answer (a window adds its own length).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a handler waiting out a window checks whether its client is still there.
const PEER_CHECK: Duration = Duration::from_millis(100);
/// Bytes a client may send after its request while a window runs (they are discarded).
const MAX_EXTRA_INPUT: usize = 64 * 1024;

static LOCAL_ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

/// The address the HTTP endpoint listens on (useful with port 0), once it is bound.
pub fn local_addr() -> Option<std::net::SocketAddr> {
    LOCAL_ADDR.get().copied()
}

struct Shared {
    rt: &'static Runtime,
    commands: Sender<Command>,
    token: Option<String>,
    connections: AtomicUsize,
    windows: AtomicUsize,
    next_window: AtomicU64,
}

/// Binds `addr` and serves from a thread named `threadprof-http`. A bind failure, an empty
/// token, or a non-loopback address without a token (unless
/// [`Config::http_allow_unauthenticated`](crate::Config::http_allow_unauthenticated)) is logged
/// as one error and no server starts; the profiler goes on without the endpoint.
pub(crate) fn serve(rt: &'static Runtime, addr: &str, commands: Sender<Command>) {
    let config = &rt.config;
    let not_served = |why: &str| {
        error(
            "http-bind",
            &format!("cannot serve profiles over HTTP on {addr}: {why}; sampling and dumps go on"),
        );
    };
    if config
        .http_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        // Config::resolve refuses it first; this guards a Config built another way.
        return not_served("the token is empty (an empty token is not \"no authentication\")");
    }
    let addrs: Vec<SocketAddr> = match addr.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return not_served(&e.to_string()),
    };
    let loopback = !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback());
    if !loopback && config.http_token.is_none() && !config.http_allow_unauthenticated {
        return not_served(
            "it is not a loopback address and no token is set, so anyone who can reach it could \
             read the profiles; set THREADPROF_HTTP_TOKEN, or THREADPROF_HTTP_ALLOW_UNAUTHENTICATED=1 \
             (Profiler::builder().http_allow_unauthenticated()) to serve it without one",
        );
    }
    let listener = match TcpListener::bind(&addrs[..]) {
        Ok(l) => l,
        Err(e) => return not_served(&e.to_string()),
    };
    let local = listener.local_addr().ok();
    if let Some(a) = local {
        let _ = LOCAL_ADDR.set(a);
    }
    if !loopback && config.http_token.is_none() {
        log::info!(
            "profiles are served on {addr}, not a loopback address, without a token, as \
             http_allow_unauthenticated asks"
        );
    }
    let shared = Arc::new(Shared {
        rt,
        commands,
        token: rt.config.http_token.clone(),
        connections: AtomicUsize::new(0),
        windows: AtomicUsize::new(0),
        next_window: AtomicU64::new(1),
    });
    let spawned = std::thread::Builder::new()
        .name("threadprof-http".into())
        .spawn(move || accept_loop(listener, shared));
    match spawned {
        Ok(_) => log::info!(
            "serving profiles on http://{}/debug/pprof/",
            local.map_or(addr.to_owned(), |a| a.to_string())
        ),
        Err(e) => error("http-thread", &format!("cannot start the HTTP thread: {e}")),
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    #[cfg(feature = "heap")]
    crate::heap::exclude_current_thread();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: keep serving.
                log::debug!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(HEAD_DEADLINE));
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            error_response(&mut stream, 503, "too many connections; try again later");
            // Take what the client already sent, without waiting (this is the accept
            // thread), so that closing does not reset the connection before it reads the 503.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            if stream.set_nonblocking(true).is_ok() {
                let mut chunk = [0u8; 4096];
                while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
            }
            continue;
        }
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("threadprof-http-conn".into())
            .spawn(move || {
                #[cfg(feature = "heap")]
                crate::heap::exclude_current_thread();
                let mut stream = stream;
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handle(&mut stream, &conn_shared)
                })) {
                    log::error!("internal error while serving a profile request: {panic:?}");
                    error_response(&mut stream, 500, "internal error");
                }
                conn_shared.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Writes a whole response. Every response carries `X-Content-Type-Options: nosniff`.
fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nX-Content-Type-Options: nosniff\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let _ = stream.flush();
}

/// An error with a one-line plain-text body. `X-Go-Pprof: 1` makes `go tool pprof` print the
/// body as the reason instead of a bare status.
fn error_response(stream: &mut TcpStream, status: u16, message: &str) {
    error_response_with(stream, status, message, &[]);
}

fn error_response_with(stream: &mut TcpStream, status: u16, message: &str, extra: &[(&str, &str)]) {
    let mut headers = vec![("X-Go-Pprof", "1")];
    headers.extend_from_slice(extra);
    respond(
        stream,
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n").as_bytes(),
        &headers,
    );
}

/// What the handlers need of a request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    /// The first `Authorization` header's value.
    authorization: Option<Vec<u8>>,
    /// `Content-Length`, or 0.
    content_length: u64,
    /// A `Transfer-Encoding` header is present (a body of unknown length).
    transfer_encoding: bool,
}

/// Parses a request head with httparse: `Ok(None)` while `buf` holds only part of it,
/// `Ok(Some((head, length of the head in bytes)))`, or the status to answer with.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(431)
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(431),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(400),
    };
    let mut head = Head {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        authorization: None,
        content_length: 0,
        transfer_encoding: false,
    };
    let mut content_length: Option<u64> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(400u16)?;
            // Two different lengths make the body's end ambiguous (request smuggling).
            if content_length.is_some_and(|m| m != n) {
                return Err(400);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = true;
        } else if h.name.eq_ignore_ascii_case("authorization") && head.authorization.is_none() {
            head.authorization = Some(h.value.to_vec());
        }
    }
    head.content_length = content_length.unwrap_or(0);
    Ok(Some((head, len)))
}

/// Reads and parses the request head before `deadline`, one deadline for the whole head
/// however slowly it arrives. Returns the head and how many body bytes came with it.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<(Head, u64), u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        read_before(stream, &mut chunk, deadline).and_then(|n| match n {
            0 => Err(400),
            n => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        })?;
        if let Some((head, len)) = parse_head(&buf)? {
            return Ok((head, (buf.len() - len) as u64));
        }
    }
}

/// One `read` that ends by `deadline`: the bytes read (0 at end of stream), or 408.
fn read_before(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, u16> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(408);
        }
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(408),
        }
    }
}

/// Reads and discards `left` body bytes before `deadline`.
fn drain_body(stream: &mut TcpStream, mut left: u64, deadline: Instant) -> Result<(), u16> {
    let mut chunk = [0u8; 1024];
    while left > 0 {
        let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match read_before(stream, &mut chunk[..want], deadline)? {
            0 => return Err(400),
            n => left -= n as u64,
        }
    }
    Ok(())
}

/// After an error answered before the request was read in full: stops sending and reads what
/// the client still sends (briefly, up to 64 KiB), so that closing does not reset the
/// connection before the client has read the answer.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut chunk = [0u8; 4096];
    let mut total = 0;
    while total < 64 * 1024 {
        match read_before(stream, &mut chunk, deadline) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let split = value
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(value.len());
    let (scheme, token) = value.split_at(split);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// The window length `seconds` asks for, read as Go's `net/http/pprof` does: missing,
/// unparsable, or not above zero means 30; above [`MAX_WINDOW_SECONDS`] is an error.
fn window_seconds(query: &str) -> Result<u64, String> {
    let asked = query_param(query, "seconds")
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_WINDOW_SECONDS);
    if asked > MAX_WINDOW_SECONDS {
        return Err(format!(
            "seconds={asked} is above the maximum of {MAX_WINDOW_SECONDS}"
        ));
    }
    Ok(asked)
}

/// Compares without an early exit, so the time taken does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn percent_decode(s: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16)).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match (b, hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn handle(stream: &mut TcpStream, shared: &Shared) {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let (head, body_read) = match read_head(stream, deadline) {
        Ok(h) => h,
        Err(status) => {
            error_response(stream, status, reason(status));
            return linger(stream);
        }
    };
    if head.method != "GET" {
        error_response_with(
            stream,
            405,
            &format!("method {} is not allowed; only GET is", head.method),
            &[("Allow", "GET")],
        );
        return linger(stream);
    }
    if head.transfer_encoding {
        error_response(stream, 411, "a request body needs a Content-Length");
        return linger(stream);
    }
    if head.content_length > MAX_BODY {
        error_response(
            stream,
            413,
            &format!("request bodies above {MAX_BODY} bytes are refused"),
        );
        return linger(stream);
    }
    if let Err(status) = drain_body(
        stream,
        head.content_length.saturating_sub(body_read),
        deadline,
    ) {
        return error_response(stream, status, reason(status));
    }
    if let Some(token) = &shared.token {
        let presented = head.authorization.as_deref().and_then(bearer_token);
        if !presented.is_some_and(|p| constant_time_eq(p, token.as_bytes())) {
            return error_response_with(
                stream,
                401,
                "missing or wrong bearer token",
                &[("WWW-Authenticate", "Bearer realm=\"threadprof\"")],
            );
        }
    }
    let target = head.target.as_str();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/debug/pprof" | "/debug/pprof/" => index(stream, shared),
        "/debug/pprof/profile" => window(stream, shared, query, View::Cpu, false),
        "/debug/pprof/flamegraph" => window(stream, shared, query, View::Cpu, true),
        "/debug/fgprof" if shared.rt.config.wall_frequency == 0 => error_response(
            stream,
            404,
            "wall-clock sampling is off, so there is no wall profile to serve; turn it on with \
             THREADPROF_WALL_FREQUENCY=99",
        ),
        "/debug/fgprof" => window(stream, shared, query, View::Wall, false),
        "/debug/pprof/heap" => heap(stream, shared, query, HeapDefault::InUse, "heap"),
        "/debug/pprof/allocs" => heap(stream, shared, query, HeapDefault::Alloc, "allocs"),
        _ => match path
            .strip_prefix("/profiles/")
            .and_then(|f| f.strip_suffix(".pb.gz"))
        {
            Some(name) => match name.strip_suffix(".heap") {
                Some(tag) => heap_file(stream, shared, tag),
                None => cumulative(stream, shared, name),
            },
            None => error_response(stream, 404, &format!("no such path: {path}")),
        },
    }
}

/// Sends `command` (built around a reply channel) to the dump thread and waits for the answer.
fn ask<T>(shared: &Shared, make: impl FnOnce(Sender<T>) -> Command, wait: Duration) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    shared.commands.send(make(tx)).ok()?;
    rx.recv_timeout(wait).ok()
}

fn tag_id(shared: &Shared, name: &str) -> Option<u32> {
    shared.rt.registry.tag_id(name)
}

fn send_profile(stream: &mut TcpStream, profile: &Profile, name: &str) {
    match encode_gz(profile) {
        Ok(bytes) => {
            let disposition = format!("attachment; filename=\"{name}.pb.gz\"");
            respond(
                stream,
                200,
                "application/octet-stream",
                &bytes,
                &[("Content-Disposition", &disposition)],
            );
        }
        Err(e) => error_response(stream, 500, &format!("cannot encode the profile: {e}")),
    }
}

/// One of the [`MAX_WINDOWS`] window slots, held while a window runs. Dropped with a window
/// still open (the client left, or the handler panicked), it cancels the window at the dump
/// thread; either way it frees the slot.
struct WindowSlot<'a> {
    shared: &'a Shared,
    open: Option<u64>,
}

impl<'a> WindowSlot<'a> {
    /// A slot, or `None` when [`MAX_WINDOWS`] are taken.
    fn take(shared: &'a Shared) -> Option<WindowSlot<'a>> {
        if shared.windows.fetch_add(1, Ordering::AcqRel) >= MAX_WINDOWS {
            shared.windows.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WindowSlot { shared, open: None })
    }
}

impl Drop for WindowSlot<'_> {
    fn drop(&mut self) {
        // Free the slot first: once the dump thread has dropped the window, the slot is free.
        self.shared.windows.fetch_sub(1, Ordering::AcqRel);
        if let Some(id) = self.open.take() {
            let _ = self.shared.commands.send(Command::CancelWindow(id));
        }
    }
}

/// Waits `length` while watching the client every [`PEER_CHECK`]: false as soon as it closed
/// or reset the connection (as Go's server, a client that shuts down its sending side counts
/// as gone), or sent more than [`MAX_EXTRA_INPUT`] bytes after its request.
fn client_stays(stream: &mut TcpStream, length: Duration) -> bool {
    let end = Instant::now() + length;
    let mut chunk = [0u8; 1024];
    let mut extra = 0;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        if stream.set_read_timeout(Some(left.min(PEER_CHECK))).is_err() {
            return false;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                extra += n;
                if extra > MAX_EXTRA_INPUT {
                    return false;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
}

/// Serves a window of `seconds` (see [`window_seconds`]): the samples of `view` taken while it
/// runs, as a gzipped pprof profile or, with `svg`, a flame graph.
fn window(stream: &mut TcpStream, shared: &Shared, query: &str, view: View, svg: bool) {
    let seconds = match window_seconds(query) {
        Ok(n) => n,
        Err(message) => return error_response(stream, 400, &message),
    };
    let tag = match query_param(query, "tag") {
        None => None,
        Some(t) => match tag_id(shared, &t) {
            Some(id) => Some((id, t)),
            None => return error_response(stream, 400, &format!("unknown tag {t:?}")),
        },
    };
    let Some(mut slot) = WindowSlot::take(shared) else {
        return error_response(
            stream,
            429,
            "too many profile requests in flight; try again later",
        );
    };
    let id = shared.next_window.fetch_add(1, Ordering::Relaxed);
    if shared
        .commands
        .send(Command::OpenWindow(id, tag.as_ref().map(|t| t.0)))
        .is_err()
    {
        return error_response(stream, 503, "the profiler is shutting down or stopped");
    }
    slot.open = Some(id);
    if !client_stays(stream, Duration::from_secs(seconds)) {
        // Dropping the slot cancels the window and frees the slot now, not when it would end.
        log::debug!("a profile request's client left; its window is cancelled");
        return;
    }
    slot.open = None;
    let profile = ask(
        shared,
        |tx| Command::CloseWindow(id, view, tx),
        ANSWER_TIMEOUT,
    );
    drop(slot);
    let Some(profile) = profile else {
        return error_response(stream, 503, "the profiler is shutting down or stopped");
    };
    let name = match (tag, view) {
        (Some(t), View::Wall) => format!("{}.wall", t.1),
        (Some(t), _) => t.1,
        (None, View::Wall) => "fgprof".to_owned(),
        (None, _) => "profile".to_owned(),
    };
    if svg {
        let title = format!("{name}: CPU, {seconds} s");
        let sel = crate::flame::Selection {
            sample_type: "cpu".into(),
            ..Default::default()
        };
        let stacks = match crate::flame::stacks(&profile, &sel) {
            Ok(s) => s,
            Err(e) => return error_response(stream, 500, &e.to_string()),
        };
        match crate::flame::flamegraph_svg(&title, &stacks) {
            Ok(svg) => respond(stream, 200, "image/svg+xml", &svg, &[]),
            Err(e) => error_response(stream, 200, &format!("{e} in the last {seconds} s")),
        }
    } else {
        send_profile(stream, &profile, &name);
    }
}

fn cumulative(stream: &mut TcpStream, shared: &Shared, name: &str) {
    let tag = if name == "_merged" {
        None
    } else {
        match tag_id(shared, name) {
            Some(id) => Some(id),
            None => return error_response(stream, 404, &format!("no profile for tag {name:?}")),
        }
    };
    match ask(shared, |tx| Command::Cumulative(tag, tx), ANSWER_TIMEOUT) {
        Some(p) => send_profile(stream, &p, name),
        None => error_response(stream, 503, "the profiler is shutting down or stopped"),
    }
}

/// Why there is no heap profile to serve.
const NO_HEAP: &str = "heap profiling is not in use: build with the cargo feature `heap`, make \
                       `threadprof::Allocator` the #[global_allocator], and leave \
                       THREADPROF_HEAP_INTERVAL above 0";

/// `/debug/pprof/heap` and `/debug/pprof/allocs` (`?tag=T` for one tag): the heap profile now,
/// as Go serves it (`inuse_space` or `alloc_space` shown first). Go's `gc` and `debug`
/// parameters are ignored.
fn heap(stream: &mut TcpStream, shared: &Shared, query: &str, default: HeapDefault, name: &str) {
    let tag = match query_param(query, "tag") {
        None => None,
        Some(t) => match tag_id(shared, &t) {
            Some(id) => Some(id),
            None => return error_response(stream, 400, &format!("unknown tag {t:?}")),
        },
    };
    match ask(shared, |tx| Command::Heap(tag, default, tx), ANSWER_TIMEOUT) {
        Some(Some(p)) => send_profile(stream, &p, name),
        Some(None) => error_response(stream, 404, NO_HEAP),
        None => error_response(stream, 503, "the profiler is shutting down or stopped"),
    }
}

/// `/profiles/{tag}.heap.pb.gz` and `/profiles/_merged.heap.pb.gz`: as the dump files.
fn heap_file(stream: &mut TcpStream, shared: &Shared, name: &str) {
    let tag = if name == "_merged" {
        None
    } else {
        match tag_id(shared, name) {
            Some(id) => Some(id),
            None => {
                return error_response(stream, 404, &format!("no heap profile for tag {name:?}"))
            }
        }
    };
    let file = format!("{name}.heap");
    match ask(
        shared,
        |tx| Command::Heap(tag, HeapDefault::InUse, tx),
        ANSWER_TIMEOUT,
    ) {
        Some(Some(p)) => send_profile(stream, &p, &file),
        Some(None) => error_response(stream, 404, NO_HEAP),
        None => error_response(stream, 503, "the profiler is shutting down or stopped"),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn index(stream: &mut TcpStream, shared: &Shared) {
    let counts = ask(shared, Command::Counts, ANSWER_TIMEOUT).unwrap_or_default();
    let live = shared.rt.registry.live_threads();
    let wall_link = if shared.rt.config.wall_frequency > 0 {
        "<a href=\"/debug/fgprof?seconds=30\">wall-clock profile, next 30 s</a> · "
    } else {
        ""
    };
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>threadprof</title></head><body>\
         <h1>threadprof</h1><p><a href=\"/debug/pprof/profile?seconds=30\">CPU profile, next 30 s (all tags)</a> · \
         {wall_link}<a href=\"/debug/pprof/flamegraph?seconds=10\">flame graph, next 10 s</a> · \
         <a href=\"/profiles/_merged.pb.gz\">cumulative, all tags</a> · \
         <a href=\"/debug/pprof/heap\">heap (feature heap)</a></p>\
         <table border=\"1\" cellpadding=\"4\"><tr><th>tag</th><th>samples so far</th><th>live threads</th><th>links</th></tr>",
    );
    for tag in shared.rt.registry.tag_names() {
        let samples = counts
            .iter()
            .find(|(t, _)| *t == tag)
            .map_or(0, |(_, n)| *n);
        let threads: Vec<String> = live
            .iter()
            .filter(|t| t.tag == tag)
            .map(|t| format!("{} ({})", html_escape(&t.name), t.tid))
            .collect();
        let e = html_escape(&tag);
        html.push_str(&format!(
            "<tr><td>{e}</td><td>{samples}</td><td>{}</td><td><a href=\"/profiles/{e}.pb.gz\">cumulative</a> · \
             <a href=\"/debug/pprof/profile?seconds=30&amp;tag={e}\">next 30 s</a> · \
             <a href=\"/debug/pprof/flamegraph?seconds=10&amp;tag={e}\">flame graph</a></td></tr>",
            threads.join(", ")
        ));
    }
    html.push_str("</table></body></html>");
    respond(
        stream,
        200,
        "text/html; charset=utf-8",
        html.as_bytes(),
        &[],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_and_token_compare() {
        assert_eq!(
            query_param("seconds=5&tag=ip%5Fmanager", "tag").as_deref(),
            Some("ip_manager")
        );
        assert_eq!(query_param("seconds=5", "tag"), None);
        assert_eq!(
            query_param("a&seconds=%zz", "seconds").as_deref(),
            Some("%zz")
        );
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    fn parsed(raw: &str) -> Result<Option<Head>, u16> {
        parse_head(raw.as_bytes()).map(|h| h.map(|(head, _)| head))
    }

    #[test]
    fn request_heads_are_parsed_by_httparse() {
        let head = parsed(
            "GET /a?b=c HTTP/1.1\r\nAuthorization: Bearer x\r\nContent-Length: 3\r\n\r\nabc",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            head,
            Head {
                method: "GET".into(),
                target: "/a?b=c".into(),
                authorization: Some(b"Bearer x".to_vec()),
                content_length: 3,
                transfer_encoding: false,
            }
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\n\r\nabc").unwrap().unwrap().1,
            18
        );
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parsed("GET / HTTP/1.1\r\nHo st: x\r\n\r\n"), Err(400));
        assert_eq!(parsed("GET / HTTP/9.1\r\n\r\n"), Err(400));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parsed(&many), Err(431));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
        assert_eq!(parsed(&long), Err(431));
        let two = "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parsed(two), Err(400));
        assert_eq!(
            parsed("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(400)
        );
        let chunked = parsed("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(chunked.unwrap().unwrap().transfer_encoding);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER  s3cret ",
            " Bearer\ts3cret",
        ] {
            assert_eq!(bearer_token(v.as_bytes()), Some(&b"s3cret"[..]), "{v:?}");
        }
        assert_eq!(bearer_token(b"Basic czNjcmV0"), None);
        assert_eq!(bearer_token(b"Bearers3cret"), None);
        assert_eq!(bearer_token(b"Bearer"), Some(&b""[..]));
    }

    #[test]
    fn seconds_is_read_as_go_reads_it() {
        for (query, want) in [
            ("", 30),
            ("seconds=", 30),
            ("seconds=abc", 30),
            ("seconds=0", 30),
            ("seconds=-5", 30),
            ("seconds=1.5", 30),
            ("seconds=99999999999999999999", 30),
            ("seconds=1", 1),
            ("seconds=%2B7", 7),
            ("tag=x&seconds=300", 300),
        ] {
            assert_eq!(window_seconds(query), Ok(want), "{query}");
        }
        let err = window_seconds("seconds=301").unwrap_err();
        assert!(err.contains("maximum of 300"), "{err}");
    }
}
