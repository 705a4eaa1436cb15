//! MemcacheQ 0.2.1's command line as its users type it: getopt-style short options (`-vv`,
//! `-dr`, `-p22201`) turned into the separate words argh parses, and the `-h` usage and `-i`
//! licence texts. What each option does is decided in `serve_args`.

/// MemcacheQ's options that are switches.
const SWITCHES: &[char] = &['d', 'r', 'v', 'h', 'i', 'N', 'R'];
/// MemcacheQ's options that take a value.
const WITH_VALUE: &[char] = &[
    'p', 'U', 's', 'a', 'l', 'u', 'c', 'P', 't', 'm', 'A', 'H', 'L', 'C', 'T', 'S', 'e', 'E', 'B',
    'D',
];
/// mqd's long options of `serve` that take a value (their value is never reinterpreted).
const LONG_WITH_VALUE: &[&str] = &[
    "--listen",
    "--data-dir",
    "--max-message-size",
    "--sync",
    "--threads",
    "--max-connections",
    "--max-open-reads",
    "--open-timeout",
    "--max-queue-items",
    "--max-queue-bytes",
    "--min-free-space",
    "--log-format",
];

/// Splits getopt-style clusters in the arguments of `serve` (`args` are the words after it):
/// `-vv` → `-v -v`, `-dr` → `-d -r`, `-p22201` → `-p 22201`. Values are left alone, and so is
/// anything that is not a cluster of MemcacheQ's letters (argh then reports it).
pub fn split_short_options(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            out.push(word.clone());
            out.extend(words.cloned());
            break;
        }
        if LONG_WITH_VALUE.contains(&word.as_str()) {
            out.push(word.clone());
            out.extend(words.next().cloned());
            continue;
        }
        let Some(letters) = word.strip_prefix('-').filter(|l| !l.starts_with('-')) else {
            out.push(word.clone());
            continue;
        };
        match split_cluster(letters) {
            Some((flags, value)) => {
                let takes_value = flags
                    .last()
                    .is_some_and(|f| WITH_VALUE.contains(&f.chars().nth(1).unwrap_or(' ')));
                out.extend(flags);
                match value {
                    Some(value) => out.push(value),
                    None if takes_value => out.extend(words.next().cloned()),
                    None => {}
                }
            }
            None => out.push(word.clone()),
        }
    }
    out
}

/// `dr` → (`-d`, `-r`), `p22201` → (`-p`), `22201`. None if it is not a getopt cluster.
fn split_cluster(letters: &str) -> Option<(Vec<String>, Option<String>)> {
    let mut flags = Vec::new();
    for (at, letter) in letters.char_indices() {
        if SWITCHES.contains(&letter) {
            flags.push(format!("-{letter}"));
        } else if WITH_VALUE.contains(&letter) {
            flags.push(format!("-{letter}"));
            let rest = &letters[at + letter.len_utf8()..];
            return Some((flags, (!rest.is_empty()).then(|| rest.to_string())));
        } else {
            return None;
        }
    }
    (!flags.is_empty()).then_some((flags, None))
}

/// `mqd serve -h`: MemcacheQ's usage, with what each option does here.
pub const USAGE: &str = "\
mqd (MemcacheQ 0.2.1 compatible) serve options:
-p <num>      TCP port to listen on (default: 22201, and 47774 for mqmq)
-U <num>      UDP port: only 0 (off) is accepted, mqd has no UDP
-s <file>     unix socket path to listen on (without -p/-l/--listen: no TCP)
-a <mask>     access mask for the unix socket, in octal (default: 0700)
-l <ip_addr>  interface to listen on (default: 127.0.0.1)
-d            run as a daemon (returns once the server listens)
-r            maximize the core file limit
-u <username> assume the identity of <username> (only when run as root)
-c <num>      max simultaneous connections (default: 1024)
-v            verbose (debug logging)
-vv           very verbose (trace logging)
-h            print this help and exit
-i            print license info and exit
-P <file>     save the PID in <file>
-t <num>      number of event-loop threads (default: one per core but one)
-m <num>      RocksDB block cache in megabytes (default: 64)
-H <dir>      data directory (default: ./mqd-data); BerkeleyDB files there are not read
-B <num>      largest message in bytes (default: 1m; k/m suffixes allowed)
-N            do not fsync on commit (same as --sync none)
-A <num>      BerkeleyDB page size: accepted, no effect
-L <num>      BerkeleyDB log buffer size: accepted, no effect
-C <num>      BerkeleyDB checkpoint interval: accepted, no effect
-T <num>      BerkeleyDB memp_trickle interval: accepted, no effect
-S <num>      BerkeleyDB queue size check interval: accepted, no effect
-e <num>      BerkeleyDB clean page percentage: accepted, no effect
-E <num>      BerkeleyDB file size: accepted, no effect
-D <num>      BerkeleyDB deadlock detection interval: accepted, no effect
-R            BerkeleyDB log removal: accepted, no effect
Run `mqd serve --help` for mqd's own options.";

/// `mqd serve -i`: the licence.
pub const LICENSE: &str = include_str!("../../LICENSE");

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Vec<String> {
        let words: Vec<String> = line.split(' ').map(String::from).collect();
        split_short_options(&words)
    }

    #[test]
    fn clusters_become_words() {
        assert_eq!(split("-vv -dr"), ["-v", "-v", "-d", "-r"]);
        assert_eq!(split("-p22201 -dp 1"), ["-p", "22201", "-d", "-p", "1"]);
        assert_eq!(split("-H /x -N"), ["-H", "/x", "-N"]);
    }

    #[test]
    fn values_and_unknown_words_stay() {
        assert_eq!(split("-P -vv"), ["-P", "-vv"]);
        assert_eq!(split("--data-dir -dr"), ["--data-dir", "-dr"]);
        assert_eq!(split("-xyz --sync none"), ["-xyz", "--sync", "none"]);
        assert_eq!(split("-- -vv"), ["--", "-vv"]);
    }
}
