//! `keygate-admin seal-key` and the seal keys `serve` reads, through the binary itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use keygate_admin::seal::SealKey;

/// The binary with `args` and `env`, and no KEYGATE_* from the caller's environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate-admin"));
    cmd.args(args).env("RUST_LOG", "warn").env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEYGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn generate() -> String {
    let out = run(&["seal-key", "generate"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.ends_with('\n') && text.lines().count() == 1, "stdout is the key and nothing else: {text:?}");
    text.trim_end().to_owned()
}

#[test]
fn generate_prints_a_new_key_and_id_prints_the_configured_ids_in_order() {
    let [a, b] = [generate(), generate()];
    assert_ne!(a, b);
    assert!(a.starts_with("kgseal_") && a.len() == "kgseal_".len() + 43, "{a}");
    let id = |key: &str| SealKey::parse(key).unwrap().id().to_string();

    let out = run(&["seal-key", "id"], &[("KEYGATE_SEAL_KEY", &format!("{a}, {b}"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}\n{}\n", id(&a), id(&b)));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seal-keys");
    std::fs::write(&file, format!("# new first\n{b}\n\n{a}  # old\n")).unwrap();
    let path = file.to_str().unwrap();
    for out in [run(&["seal-key", "id", "--seal-key-file", path], &[]), run(&["seal-key", "id"], &[("KEYGATE_SEAL_KEY_FILE", path)])] {
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), format!("{}\n{}\n", id(&b), id(&a)));
    }

    // Neither, both, or a mistyped key: refused, and the key is never echoed.
    let out = run(&["seal-key", "id"], &[]);
    assert!(!out.status.success() && stderr(&out).contains("no seal key is configured"), "{}", stderr(&out));
    let out = run(&["seal-key", "id", "--seal-key-file", path], &[("KEYGATE_SEAL_KEY", &a)]);
    assert!(!out.status.success() && stderr(&out).contains("one way"), "{}", stderr(&out));
    let typo = format!("{a}x");
    let out = run(&["seal-key", "id"], &[("KEYGATE_SEAL_KEY", &typo)]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("entry 1 of KEYGATE_SEAL_KEY"), "{err}");
    assert!(!err.contains(&typo["kgseal_".len()..]) && stdout(&out).is_empty(), "{err}");
}

#[test]
fn serve_refuses_a_postgres_store_without_a_seal_key_before_connecting() {
    // Nothing listens on port 1: the refusal comes before any connection attempt.
    let out = run(&["serve", "--addr", "127.0.0.1:0", "--store", "postgres://keygate:hunter2@127.0.0.1:1/keygate"], &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("needs a seal key") && err.contains("keygate-admin seal-key generate"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(stdout(&out).is_empty());
}
