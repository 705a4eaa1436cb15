//! The admin lines of `mqd cluster` (protocol-spec/cluster.md 7), pure: a request line parsed
//! into an [`AdminRequest`], an answer ([`AdminReply`]) spelled as reply lines, and those lines
//! read back into an answer by the command line. Nothing here touches a socket or raft-rs.

use std::time::Duration;

use super::super::members::check_address;

/// Longest request line, `\r\n` included.
pub const MAX_LINE: usize = 512;
/// How long `add` and `remove` wait for the change when the request names no wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest wait a request may ask for.
pub const MOST_WAIT: Duration = Duration::from_secs(600);

/// What an admin connection asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Every member, its role and (from the leader) how far it has the log.
    Status,
    /// Adds node `id` at `addr` as a learner; the leader makes it a voter once it caught up.
    Add {
        id: u64,
        addr: String,
        wait: Duration,
    },
    /// Removes node `id`.
    Remove { id: u64, wait: Duration },
}

impl AdminRequest {
    /// Whether only the leader can carry it out.
    pub fn is_change(&self) -> bool {
        !matches!(self, AdminRequest::Status)
    }

    /// How long the answer may take: the change's wait, and a margin for the leader to say so.
    pub fn patience(&self) -> Duration {
        match self {
            AdminRequest::Status => Duration::from_secs(5),
            AdminRequest::Add { wait, .. } | AdminRequest::Remove { wait, .. } => {
                *wait + Duration::from_secs(5)
            }
        }
    }
}

/// One member as an answer shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    /// `None`: no address known (a member of the founders' membership not in `--cluster`).
    pub addr: Option<String>,
    pub voter: bool,
    /// The last log index the leader knows this member holds (`None` from a non-leader).
    pub matched: Option<u64>,
    /// The leader's last index less `matched`.
    pub lag: Option<u64>,
}

/// The membership as one member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// The member that answered.
    pub node: u64,
    /// 0: none known.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub members: Vec<MemberInfo>,
}

/// Why a request was not carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminError {
    /// The request is wrong whatever the group's state: `CLIENT_ERROR <reason>`.
    Refused(String),
    /// Another change is under way: `SERVER_ERROR busy: <reason>`.
    Busy(String),
    /// No leader known, or it cannot be reached: `SERVER_ERROR no leader`. Nothing was done.
    NoLeader,
    /// Nothing was done, and asking again shortly will do it (the leadership is moving):
    /// `SERVER_ERROR retry: <reason>`.
    Retry(String),
    /// The change was proposed but is not done within the wait (a learner still catching up):
    /// `SERVER_ERROR timeout: <reason>`. The leader goes on with it.
    Timeout(String),
    /// The leader lost its leadership before the change was applied: it may be applied or
    /// not. `SERVER_ERROR unknown: <reason>`.
    Unknown(String),
    /// Not an admin request: `ERROR`.
    UnknownCommand,
}

pub type AdminReply = Result<ClusterView, AdminError>;

/// Parses one request line (without its line end).
pub fn parse_request(line: &str) -> Result<AdminRequest, AdminError> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let refuse = |what: &str| Err(AdminError::Refused(what.to_string()));
    let id = |word: &str| match word.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(AdminError::Refused(format!(
            "{word:?} is not a node id (1 or more)"
        ))),
    };
    let wait = |word: Option<&&str>| match word {
        None => Ok(DEFAULT_WAIT),
        Some(word) => match word.parse::<u64>() {
            Ok(ms) if ms > 0 && Duration::from_millis(ms) <= MOST_WAIT => {
                Ok(Duration::from_millis(ms))
            }
            _ => Err(AdminError::Refused(format!(
                "{word:?} is not a wait in milliseconds (1 to {})",
                MOST_WAIT.as_millis()
            ))),
        },
    };
    match words.as_slice() {
        ["cluster", "status"] => Ok(AdminRequest::Status),
        ["cluster", "add", node, addr, rest @ ..] if rest.len() <= 1 => {
            let id = id(node)?;
            if let Err(e) = check_address(addr) {
                return refuse(&e);
            }
            Ok(AdminRequest::Add {
                id,
                addr: addr.to_string(),
                wait: wait(rest.first())?,
            })
        }
        ["cluster", "remove", node, rest @ ..] if rest.len() <= 1 => Ok(AdminRequest::Remove {
            id: id(node)?,
            wait: wait(rest.first())?,
        }),
        ["cluster", ..] => refuse(
            "usage: cluster status | cluster add <id> <host:port> [<wait ms>] | \
             cluster remove <id> [<wait ms>]",
        ),
        _ => Err(AdminError::UnknownCommand),
    }
}

/// The request line for `request` (with its line end).
pub fn request_line(request: &AdminRequest) -> String {
    match request {
        AdminRequest::Status => "cluster status\r\n".into(),
        AdminRequest::Add { id, addr, wait } => {
            format!("cluster add {id} {addr} {}\r\n", wait.as_millis())
        }
        AdminRequest::Remove { id, wait } => {
            format!("cluster remove {id} {}\r\n", wait.as_millis())
        }
    }
}

fn or_dash(n: Option<u64>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

/// The reply lines of an answer (each ending `\r\n`; a view ends with `END`).
pub fn format_reply(reply: &AdminReply) -> String {
    match reply {
        Ok(view) => {
            let mut out = String::new();
            for m in &view.members {
                out.push_str(&format!(
                    "MEMBER {} {} {} {} {}\r\n",
                    m.id,
                    m.addr.as_deref().unwrap_or("-"),
                    if m.voter { "voter" } else { "learner" },
                    or_dash(m.matched),
                    or_dash(m.lag)
                ));
            }
            out.push_str(&format!(
                "NODE {}\r\nLEADER {}\r\nTERM {}\r\nCOMMIT {}\r\nEND\r\n",
                view.node, view.leader, view.term, view.commit
            ));
            out
        }
        Err(e) => format!("{}\r\n", error_line(e)),
    }
}

/// How an error is spelled (one line, no line end).
pub fn error_line(error: &AdminError) -> String {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    match error {
        AdminError::Refused(why) => format!("CLIENT_ERROR {}", clean(why)),
        AdminError::Busy(why) => format!("SERVER_ERROR busy: {}", clean(why)),
        AdminError::NoLeader => "SERVER_ERROR no leader".into(),
        AdminError::Retry(why) => format!("SERVER_ERROR retry: {}", clean(why)),
        AdminError::Timeout(why) => format!("SERVER_ERROR timeout: {}", clean(why)),
        AdminError::Unknown(why) => format!("SERVER_ERROR unknown: {}", clean(why)),
        AdminError::UnknownCommand => "ERROR".into(),
    }
}

/// Whether `line` ends a reply (an error line, or `END`).
pub fn ends_reply(line: &str) -> bool {
    line == "END" || line == "ERROR" || line.starts_with("CLIENT_ERROR ") || is_server_error(line)
}

fn is_server_error(line: &str) -> bool {
    line.starts_with("SERVER_ERROR ")
}

/// Reads an answer back from its lines (without line ends); `Err` with a description if they
/// are not one.
pub fn parse_reply(lines: &[String]) -> Result<AdminReply, String> {
    let Some(last) = lines.last() else {
        return Err("no answer".into());
    };
    if last != "END" {
        let error = if last == "ERROR" {
            AdminError::UnknownCommand
        } else if let Some(why) = last.strip_prefix("CLIENT_ERROR ") {
            AdminError::Refused(why.into())
        } else if last == "SERVER_ERROR no leader" {
            AdminError::NoLeader
        } else if let Some(why) = last.strip_prefix("SERVER_ERROR busy: ") {
            AdminError::Busy(why.into())
        } else if let Some(why) = last.strip_prefix("SERVER_ERROR retry: ") {
            AdminError::Retry(why.into())
        } else if let Some(why) = last.strip_prefix("SERVER_ERROR timeout: ") {
            AdminError::Timeout(why.into())
        } else if let Some(why) = last.strip_prefix("SERVER_ERROR unknown: ") {
            AdminError::Unknown(why.into())
        } else {
            return Err(format!("unexpected answer {last:?}"));
        };
        return Ok(Err(error));
    }
    let mut view = ClusterView {
        node: 0,
        leader: 0,
        term: 0,
        commit: 0,
        members: Vec::new(),
    };
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} is not a number"))
    };
    let maybe = |s: &str| {
        if s == "-" {
            Ok(None)
        } else {
            number(s).map(Some)
        }
    };
    for line in &lines[..lines.len() - 1] {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["MEMBER", id, addr, role, matched, lag] => view.members.push(MemberInfo {
                id: number(id)?,
                addr: (*addr != "-").then(|| addr.to_string()),
                voter: match *role {
                    "voter" => true,
                    "learner" => false,
                    _ => return Err(format!("unknown role {role:?}")),
                },
                matched: maybe(matched)?,
                lag: maybe(lag)?,
            }),
            ["NODE", n] => view.node = number(n)?,
            ["LEADER", n] => view.leader = number(n)?,
            ["TERM", n] => view.term = number(n)?,
            ["COMMIT", n] => view.commit = number(n)?,
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    Ok(Ok(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print_back() {
        for (line, request) in [
            ("cluster status", AdminRequest::Status),
            (
                "cluster add 4 127.0.0.1:7704",
                AdminRequest::Add {
                    id: 4,
                    addr: "127.0.0.1:7704".into(),
                    wait: DEFAULT_WAIT,
                },
            ),
            (
                "  cluster   remove 2 1500 ",
                AdminRequest::Remove {
                    id: 2,
                    wait: Duration::from_millis(1500),
                },
            ),
        ] {
            let parsed = parse_request(line).unwrap();
            assert_eq!(parsed, request);
            let again = request_line(&parsed);
            assert_eq!(parse_request(again.trim_end()).unwrap(), request);
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert_eq!(parse_request("get q"), Err(AdminError::UnknownCommand));
        assert_eq!(parse_request(""), Err(AdminError::UnknownCommand));
        for bad in [
            "cluster",
            "cluster add 4",
            "cluster add 0 a:1",
            "cluster add x a:1",
            "cluster add 4 nowhere",
            "cluster add 4 a:99999",
            "cluster add 4 a:1 0",
            "cluster add 4 a:1 600001",
            "cluster add 4 a:1 10 extra",
            "cluster remove",
            "cluster remove -1",
            "cluster status now",
            "cluster promote 4",
        ] {
            assert!(
                matches!(parse_request(bad), Err(AdminError::Refused(_))),
                "{bad:?}"
            );
        }
    }

    fn lines(text: &str) -> Vec<String> {
        text.split("\r\n")
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn answers_round_trip_through_their_lines() {
        let view = ClusterView {
            node: 2,
            leader: 1,
            term: 3,
            commit: 57,
            members: vec![
                MemberInfo {
                    id: 1,
                    addr: Some("127.0.0.1:7701".into()),
                    voter: true,
                    matched: Some(57),
                    lag: Some(0),
                },
                MemberInfo {
                    id: 4,
                    addr: None,
                    voter: false,
                    matched: None,
                    lag: None,
                },
            ],
        };
        let text = format_reply(&Ok(view.clone()));
        assert!(text.ends_with("END\r\n"));
        assert!(lines(&text).iter().all(|l| !ends_reply(l) || l == "END"));
        assert_eq!(parse_reply(&lines(&text)), Ok(Ok(view)));
        for error in [
            AdminError::Refused("node 9 is not a member".into()),
            AdminError::Busy("node 4 is catching up".into()),
            AdminError::NoLeader,
            AdminError::Retry("leadership moves to node 2".into()),
            AdminError::Timeout("node 4 is still a learner".into()),
            AdminError::Unknown("leadership lost".into()),
            AdminError::UnknownCommand,
        ] {
            let text = format_reply(&Err(error.clone()));
            assert_eq!(lines(&text).len(), 1);
            assert!(ends_reply(&lines(&text)[0]));
            assert_eq!(parse_reply(&lines(&text)), Ok(Err(error)));
        }
        assert_eq!(
            format_reply(&Err(AdminError::Busy("a\r\nb".into()))),
            "SERVER_ERROR busy: a  b\r\n"
        );
        assert!(parse_reply(&lines("MEMBER 1\r\nEND\r\n")).is_err());
        assert!(parse_reply(&lines("STORED\r\n")).is_err());
        assert!(parse_reply(&[]).is_err());
    }
}
