//! A local HTTP server speaking the Hugging Face Hub's routes that `imagen pull` uses, over
//! in-memory repos: `GET /api/models/{repo}/revision/{rev}?blobs=true` (the file list with
//! sizes, git blob ids and LFS SHA-256s), `GET /{repo}/resolve/{rev}/{path}` (small files
//! directly, LFS files by a redirect to `/lfs/{sha256}`, as the Hub sends them to its CDN),
//! with `Range` requests, a token for gated repos, and faults on demand: a connection cut
//! halfway, a corrupted body.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha1::Digest as _;

#[derive(Clone)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub lfs: bool,
}

#[derive(Default)]
pub struct Repo {
    pub files: Vec<File>,
    /// Requests without `Authorization: Bearer <token>` are refused (a gated model).
    pub token: Option<String>,
}

#[derive(Default)]
struct Hub {
    repos: HashMap<String, Repo>,
    /// LFS paths whose first download is cut halfway.
    cut_once: HashSet<String>,
    /// LFS paths served with one byte changed.
    corrupt: HashSet<String>,
    /// "GET <path> [Range]" of every request.
    log: Vec<String>,
}

pub struct FakeHub {
    pub base: String,
    hub: Arc<Mutex<Hub>>,
}

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl FakeHub {
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let hub = Arc::new(Mutex::new(Hub::default()));
        let h = hub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let h = h.clone();
                std::thread::spawn(move || serve(stream, &h));
            }
        });
        FakeHub { base, hub }
    }

    pub fn add(&self, name: &str, repo: Repo) {
        self.hub.lock().expect("hub").repos.insert(name.into(), repo);
    }

    pub fn cut_once(&self, path: &str) {
        self.hub.lock().expect("hub").cut_once.insert(path.into());
    }

    pub fn corrupt(&self, path: &str) {
        self.hub.lock().expect("hub").corrupt.insert(path.into());
    }

    pub fn heal(&self, path: &str) {
        self.hub.lock().expect("hub").corrupt.remove(path);
    }

    /// The requests so far, and clears them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.hub.lock().expect("hub").log)
    }
}

fn sha256(d: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(d))
}

fn blob_id(d: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", d.len()).as_bytes());
    h.update(d);
    hex::encode(h.finalize())
}

fn serve(mut stream: TcpStream, hub: &Mutex<Hub>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
        }
    }
    let range = headers.get("range").cloned();
    let auth = headers.get("authorization").cloned();
    let mut hub = hub.lock().expect("hub");
    hub.log.push(
        format!("GET {target} {}", range.as_deref().unwrap_or(""))
            .trim_end()
            .to_owned(),
    );
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let reply = route(&mut hub, path, query, range.as_deref(), auth.as_deref());
    drop(hub);
    let Reply {
        status,
        headers,
        body,
        cut,
    } = reply;
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let send = if cut { &body[..body.len() / 2] } else { &body[..] };
    let _ = stream.write_all(send);
    let _ = stream.flush();
    // a cut: the connection ends short of Content-Length
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = reader.read(&mut [0u8; 1]);
}

struct Reply {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    cut: bool,
}

fn json(status: &'static str, v: serde_json::Value) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type", "application/json".into())],
        body: v.to_string().into_bytes(),
        cut: false,
    }
}

fn route(hub: &mut Hub, path: &str, query: &str, range: Option<&str>, auth: Option<&str>) -> Reply {
    if let Some(sha) = path.strip_prefix("/lfs/") {
        let found = hub
            .repos
            .values()
            .flat_map(|r| r.files.iter())
            .find(|f| f.lfs && sha256(&f.data) == sha)
            .cloned();
        let Some(f) = found else {
            return json("404 Not Found", serde_json::json!({"error": "no such object"}));
        };
        let mut data = f.data.clone();
        if hub.corrupt.contains(&f.path) {
            data[0] ^= 0xff;
        }
        let cut = hub.cut_once.remove(&f.path);
        let start = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        return match start {
            Some(s) if s >= data.len() => json("416 Range Not Satisfiable", serde_json::json!({})),
            Some(s) => Reply {
                status: "206 Partial Content",
                headers: vec![("Content-Range", format!("bytes {s}-{}/{}", data.len() - 1, data.len()))],
                body: data[s..].to_vec(),
                cut,
            },
            None => Reply {
                status: "200 OK",
                headers: vec![],
                body: data,
                cut,
            },
        };
    }
    let (api, rest) = match path.strip_prefix("/api/models/") {
        Some(rest) => (true, rest),
        None => (false, path.trim_start_matches('/')),
    };
    let mut parts = rest.splitn(3, '/');
    let name = format!("{}/{}", parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let tail = parts.next().unwrap_or("");
    let Some(repo) = hub.repos.get(&name) else {
        return json("404 Not Found", serde_json::json!({"error": "Repository not found"}));
    };
    if let Some(t) = &repo.token
        && auth != Some(&format!("Bearer {t}"))
    {
        return json(
            "401 Unauthorized",
            serde_json::json!({"error": format!("Access to model {name} is restricted. You must have access to it and be authenticated to access it. Please log in.")}),
        );
    }
    if api {
        let rev = tail.strip_prefix("revision/").unwrap_or("");
        if rev != "main" && rev != COMMIT || query != "blobs=true" {
            return json("404 Not Found", serde_json::json!({"error": "Invalid rev id"}));
        }
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({"rfilename": f.path, "size": f.data.len(), "blobId": blob_id(&f.data)});
                if f.lfs {
                    s["lfs"] = serde_json::json!({"sha256": sha256(&f.data), "size": f.data.len(), "pointerSize": 134});
                    // an LFS file's blob is its pointer, not its content
                    s["blobId"] = blob_id(
                        format!(
                            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\n",
                            sha256(&f.data)
                        )
                        .as_bytes(),
                    )
                    .into();
                }
                s
            })
            .collect();
        return json(
            "200 OK",
            serde_json::json!({"id": name, "sha": COMMIT, "siblings": siblings}),
        );
    }
    // /{repo}/resolve/{commit}/{path}: pull asks at the commit the revision resolved to
    let Some(file_path) = tail.strip_prefix(&format!("resolve/{COMMIT}/")) else {
        return json("404 Not Found", serde_json::json!({"error": "Revision not found"}));
    };
    let Some(f) = repo.files.iter().find(|f| f.path == file_path) else {
        return json("404 Not Found", serde_json::json!({"error": "Entry not found"}));
    };
    if f.lfs {
        return Reply {
            status: "302 Found",
            headers: vec![("Location", format!("/lfs/{}", sha256(&f.data)))],
            body: Vec::new(),
            cut: false,
        };
    }
    Reply {
        status: "200 OK",
        headers: vec![],
        body: f.data.clone(),
        cut: false,
    }
}
