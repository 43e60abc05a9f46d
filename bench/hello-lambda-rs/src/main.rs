//! A hello function for Petrel's `provided` runtime: the AWS Lambda Runtime API loop over one
//! keep-alive HTTP/1.1 connection. `hello-lambda-rs --bare` exits at once (the baseline).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

fn main() {
    if std::env::args().any(|a| a == "--bare") {
        return;
    }
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").expect("AWS_LAMBDA_RUNTIME_API is set");
    let stream = TcpStream::connect(&api).expect("the Runtime API answers");
    stream.set_nodelay(true).ok();
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        write!(
            writer,
            "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: {api}\r\n\r\n"
        )
        .expect("send");
        let (id, _event) = read_response(&mut reader);
        let body = br#"{"ok":1}"#;
        write!(
            writer,
            "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: {api}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .expect("send");
        writer.write_all(body).expect("send");
        read_response(&mut reader);
    }
}

/// Reads one response; returns its request id header (if any) and its body.
fn read_response(r: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let (mut id, mut len) = (String::new(), 0usize);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).expect("read") == 0 {
            std::process::exit(0);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "lambda-runtime-aws-request-id" => id = v.trim().to_owned(),
                "content-length" => len = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("read body");
    (id, body)
}
