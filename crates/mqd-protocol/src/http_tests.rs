use super::*;

fn request(buf: &[u8]) -> (usize, Request<'_>) {
    match parse(buf) {
        ParsedHead::Request { consumed, request } => (consumed, request),
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn parses_a_get_and_keeps_http11_alive() {
    let buf = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nGET /";
    let (consumed, req) = request(buf);
    assert_eq!(consumed, buf.len() - 5, "the next request is left alone");
    assert_eq!(req.method, Method::Get);
    assert_eq!(req.path, "/metrics");
    assert!(req.keep_alive);
    assert!(!req.has_body);
}

#[test]
fn connection_header_and_http10() {
    let (_, req) = request(b"HEAD / HTTP/1.1\r\nConnection: Close\r\n\r\n");
    assert_eq!(req.method, Method::Head);
    assert!(!req.keep_alive);
    let (_, req) = request(b"GET / HTTP/1.0\r\n\r\n");
    assert!(!req.keep_alive);
    let (_, req) = request(b"GET / HTTP/1.0\nconnection: foo, keep-alive\n\n");
    assert!(req.keep_alive, "bare LF lines are accepted");
}

#[test]
fn other_methods_and_bodies() {
    let (_, req) = request(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(req.method, Method::Other);
    assert!(req.has_body);
    assert!(!req.keep_alive, "an unread body ends the connection");
    let (_, req) = request(b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(!req.has_body);
    assert!(req.keep_alive);
    let (_, req) = request(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(req.has_body);
}

#[test]
fn incomplete_heads_wait_until_the_limit() {
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nHost: a\r\n"),
        ParsedHead::NeedMore
    );
    assert_eq!(parse(b"G"), ParsedHead::NeedMore);
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_HEAD - 1, b'a');
    assert_eq!(parse(&big), ParsedHead::NeedMore);
    big.push(b'a');
    assert_eq!(
        parse(&big),
        ParsedHead::Invalid(Status::HeaderFieldsTooLarge)
    );
    // The end of the head beyond the limit does not count.
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        parse(&big),
        ParsedHead::Invalid(Status::HeaderFieldsTooLarge)
    );
}

#[test]
fn malformed_heads_are_bad_requests() {
    for bad in [
        &b"GET /\r\n\r\n"[..],
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 x\r\n\r\n",
        b"Get / HTTP/1.1\r\n\r\n",
        b"GET x HTTP/1.1\r\n\r\n",
        b"GET / HTTQ/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            parse(bad),
            ParsedHead::Invalid(Status::BadRequest),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        parse(b"GET / HTTP/2.0\r\n\r\n"),
        ParsedHead::Invalid(Status::VersionNotSupported)
    );
}

#[test]
fn a_bad_request_line_is_refused_before_the_head_ends() {
    // A memcache command typed in capitals is not left waiting for an empty line.
    assert_eq!(parse(b"GET q\r\n"), ParsedHead::Invalid(Status::BadRequest));
    assert_eq!(parse(b"GET q"), ParsedHead::NeedMore);
    assert_eq!(parse(b"GET /q HTTP/1.1\r\n"), ParsedHead::NeedMore);
}

#[test]
fn encodes_responses() {
    let mut out = Vec::new();
    let response = Response {
        status: Status::Ok,
        content_type: "text/plain",
        body: b"hi",
        head_only: false,
        close: false,
        http11: true,
    };
    encode(&response, &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
          Cache-Control: no-store\r\n\r\nhi"
    );
    out.clear();
    encode(
        &Response {
            status: Status::MethodNotAllowed,
            head_only: true,
            close: true,
            ..response
        },
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    assert!(text.contains("Allow: GET, HEAD\r\n"));
    assert!(text.contains("Connection: close\r\n"));
    assert!(text.contains("Content-Length: 2\r\n"));
    assert!(text.ends_with("\r\n\r\n"), "HEAD sends no body");
    out = Vec::new();
    encode(
        &Response {
            http11: false,
            ..response
        },
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Connection: keep-alive\r\n"), "{text}");
}

#[test]
fn encodes_streamed_bodies_in_chunks_or_until_close() {
    let mut out = Vec::new();
    encode_head(
        Status::Ok,
        "text/plain",
        BodyLength::Chunked,
        false,
        true,
        &mut out,
    );
    encode_chunk(b"hello, ", &mut out);
    encode_chunk(b"", &mut out);
    encode_chunk(&[b'x'; 26], &mut out);
    out.extend_from_slice(LAST_CHUNK);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
             Cache-Control: no-store\r\n\r\n7\r\nhello, \r\n1a\r\n{}\r\n0\r\n\r\n",
            "x".repeat(26)
        )
    );
    let mut out = Vec::new();
    encode_head(
        Status::Ok,
        "text/plain",
        BodyLength::UntilClose,
        false,
        false,
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("Content-Length") && !text.contains("Transfer-Encoding"));
    assert!(
        text.contains("Connection: close\r\n"),
        "a body that ends at close says so: {text}"
    );
}
