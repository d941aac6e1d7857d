//! `HttpServer`: Go's `/debug/pprof` paths, served from memory on threads of its own.
//!
//! GET-only HTTP/1.1 with `Connection: close`, written on std sockets because the small
//! blocking servers available (tiny_http 0.12) have no per-connection time-outs and stop
//! accepting after one accept error, and hyper would force an async runtime on the host. Every
//! connection gets read and write time-outs; at most [`MAX_CONNECTIONS`] are served at once
//! (others get 503) and at most [`MAX_WINDOWS`] profile windows run at once (others get 429).
//! Profiles come from the dump thread through commands; no path from a request reaches the file
//! system, and nothing here touches the signal handler.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::diagnostics::error;
use crate::dump::Command;
use crate::pprof::{encode_gz, Profile};
use crate::runtime::Runtime;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Profile windows (`/debug/pprof/profile`, `/debug/pprof/flamegraph`) in flight at once.
pub const MAX_WINDOWS: usize = 4;
/// Longest wait for a request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a client to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Longest wait for the dump thread to answer (a window adds its own length).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

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
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            respond(
                &mut stream,
                503,
                "text/plain",
                b"too many connections\n",
                &[],
            );
            continue;
        }
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("threadprof-http-conn".into())
            .spawn(move || {
                let mut stream = stream;
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handle(&mut stream, &conn_shared)
                })) {
                    log::error!("internal error while serving a profile request: {panic:?}");
                    respond(&mut stream, 500, "text/plain", b"internal error\n", &[]);
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
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
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

fn error_response(stream: &mut TcpStream, status: u16, message: &str) {
    respond(
        stream,
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n").as_bytes(),
        &[],
    );
}

/// The request head, or the status to answer with.
fn read_head(stream: &mut TcpStream) -> Result<String, u16> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Err(400),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(408),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return String::from_utf8(head).map_err(|_| 400);
        }
        if head.len() > MAX_HEAD {
            return Err(431);
        }
    }
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
    let head = match read_head(stream) {
        Ok(h) => h,
        Err(status) => return error_response(stream, status, reason(status)),
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != "GET" {
        return error_response(stream, 405, "only GET is supported");
    }
    if let Some(token) = &shared.token {
        let presented = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| {
                v.trim()
                    .strip_prefix("Bearer ")
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default();
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return error_response(stream, 401, "missing or wrong bearer token");
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/debug/pprof" | "/debug/pprof/" => index(stream, shared),
        "/debug/pprof/profile" => window(stream, shared, query, false),
        "/debug/pprof/flamegraph" => window(stream, shared, query, true),
        _ => match path
            .strip_prefix("/profiles/")
            .and_then(|f| f.strip_suffix(".pb.gz"))
        {
            Some(name) => cumulative(stream, shared, name),
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

fn window(stream: &mut TcpStream, shared: &Shared, query: &str, svg: bool) {
    let seconds = match query_param(query, "seconds") {
        None => 30,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=300).contains(&n) => n,
            _ => {
                return error_response(
                    stream,
                    400,
                    &format!("seconds must be a whole number from 1 to 300, not {s:?}"),
                )
            }
        },
    };
    let tag = match query_param(query, "tag") {
        None => None,
        Some(t) => match tag_id(shared, &t) {
            Some(id) => Some((id, t)),
            None => return error_response(stream, 400, &format!("unknown tag {t:?}")),
        },
    };
    if shared.windows.fetch_add(1, Ordering::AcqRel) >= MAX_WINDOWS {
        shared.windows.fetch_sub(1, Ordering::AcqRel);
        return error_response(
            stream,
            429,
            "too many profile requests in flight; try again later",
        );
    }
    let profile = (|| {
        let id = ask(
            shared,
            |tx| Command::OpenWindow(tag.as_ref().map(|t| t.0), tx),
            ANSWER_TIMEOUT,
        )?;
        std::thread::sleep(Duration::from_secs(seconds));
        ask(shared, |tx| Command::CloseWindow(id, tx), ANSWER_TIMEOUT)
    })();
    shared.windows.fetch_sub(1, Ordering::AcqRel);
    let Some(profile) = profile else {
        return error_response(stream, 503, "the profiler is shutting down or stopped");
    };
    let name = tag.map_or_else(|| "profile".to_owned(), |t| t.1);
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

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn index(stream: &mut TcpStream, shared: &Shared) {
    let counts = ask(shared, Command::Counts, ANSWER_TIMEOUT).unwrap_or_default();
    let live = shared.rt.registry.live_threads();
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>threadprof</title></head><body>\
         <h1>threadprof</h1><p><a href=\"/debug/pprof/profile?seconds=30\">CPU profile, next 30 s (all tags)</a> · \
         <a href=\"/debug/pprof/flamegraph?seconds=10\">flame graph, next 10 s</a> · \
         <a href=\"/profiles/_merged.pb.gz\">cumulative, all tags</a></p>\
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
}
