//! Replays the fuzz targets' seed corpora (`fuzz/corpus/<target>/`) and every input a fuzz run
//! ever failed on (`fuzz/regressions/<target>/`) through the same harness code the fuzz targets
//! run (`fuzz/harness/`), so that `cargo test` keeps them fixed. See fuzz/README.md.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../fuzz/harness/max_age.rs"]
mod max_age;
#[path = "../fuzz/harness/schedule.rs"]
mod schedule;
#[path = "../fuzz/harness/server_answers.rs"]
mod server_answers;

/// The files of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable directory").path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `harness` on every input of `target`; reports every input that fails, by file.
fn replay(target: &str, minimum: usize, harness: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= minimum,
        "expected at least {minimum} inputs for {target}, found {files:?}"
    );
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("a readable input");
        if std::env::var_os("MPU_FUZZ_DEBUG").is_some_and(|v| v == "1") {
            eprintln!("== {}", file.display());
        }
        if catch_unwind(AssertUnwindSafe(|| harness(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: these inputs fail (the panic messages are above; replay one with \
         `fuzz/run.sh replay {target} FILE`): {failed:#?}"
    );
}

#[test]
fn max_age_inputs() {
    replay("max_age", 5, max_age::run);
}

#[test]
fn schedule_inputs() {
    replay("schedule", 5, schedule::run);
}

#[test]
fn server_answers_inputs() {
    replay("server_answers", 5, server_answers::run);
}

/// The framing of the server_answers input, so that a seed means what its name says.
#[test]
fn server_answers_framing() {
    use server_answers::{Answer, BrokenKind, Input, Kind};
    let input = Input::parse(
        b"noverify measure dryrun prefix virtual concurrency=99 page=0 maxage=2h clock=5\n\
          ignored\n\
          --list--\n\
          HTTP/1.1 503 Slow Down\r\nDate: x\r\nx-fuzz-chunk: 3\r\n\r\n<Error/>\n\
          --abort--\r\n\
          !timeout\n\
          --list--\n\
          HTTP/1.1 20 OK\n\
          --parts--\n\
          --parts--\n\
          HTTP/1.1 200 OK\nno colon\n\nbody",
    );
    assert!(!input.verify && input.measure_bytes && input.dry_run);
    assert_eq!(input.prefix.as_deref(), Some("data/"));
    assert_eq!((input.concurrency, input.page_size), (8, 1));
    assert_eq!(input.max_age.as_secs(), 7_200);
    let [list, abort, parts] = &input.answers;
    assert_eq!((list.len(), abort.len(), parts.len()), (2, 1, 2));
    let Answer::Response {
        status,
        headers,
        body,
        chunk,
        break_after,
    } = &list[0]
    else {
        panic!("{:?}", list[0]);
    };
    assert_eq!((*status, *chunk, *break_after), (503, Some(3), None));
    assert_eq!(headers.len(), 1);
    assert_eq!(&body[..], b"<Error/>");
    assert!(matches!(abort[0], Answer::Broken(BrokenKind::Timeout)));
    for broken in [&list[1], &parts[0], &parts[1]] {
        assert!(
            matches!(broken, Answer::Broken(BrokenKind::Io)),
            "{broken:?}"
        );
    }
    assert_eq!(Kind::Parts as usize, 2);
}
