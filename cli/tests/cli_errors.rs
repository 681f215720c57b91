//! The `kombu` binary's errors, URLs, logging, help and completions, driven end to end as a user
//! would: one-line errors that never show a password, where the URL comes from, library warnings
//! on stderr.

mod cli_support;

use predicates::prelude::*;

use cli_support::*;

#[test]
fn errors_are_one_line_and_never_show_the_password() {
    let (_dir, url) = setup();
    // Unknown scheme, with a password.
    let out = kombu("foo://user:secret@host:1234/vhost")
        .args(["size", "q"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("secret"), "{stderr}");
    assert!(String::from_utf8(out.stdout).unwrap().is_empty());
    assert!(stderr.contains("foo://user:**@host:1234/vhost"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");

    // A working memory URL with a password: an error later still masks it.
    let out = kombu("memory://user:secret@x")
        .args(["consume", "--queue", "q", "--accept", "bogus"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));
    // Even a URL that does not parse.
    let out = kombu("foo://user:secret@host:99999")
        .args(["purge", "q"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));
    // And --verbose details.
    let out = kombu("nope://u:secret@h")
        .args(["--verbose", "size", "q"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));

    // Unknown serializer: names the known ones, creates no database file.
    let dir = tempfile::tempdir().unwrap();
    let fresh = sqlite_url(dir.path(), "never.db");
    kombu(&fresh)
        .args([
            "publish",
            "--routing-key",
            "q",
            "--serializer",
            "pickle2",
            "1",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("pickle2").and(predicate::str::contains("json")));
    assert!(!dir.path().join("never.db").exists());
    // Unknown compression, a body that is not JSON, a queue that does not exist.
    kombu(&url)
        .args(["publish", "--routing-key", "q", "--compression", "rar", "1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("rar"));
    kombu(&url)
        .args(["publish", "--routing-key", "q", "not json"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--serializer text"));
    kombu(&url)
        .args(["publish", "--routing-key", "missing", "--mandatory", "1"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("missing").and(predicate::str::contains("--declare-queue")),
        );
    // A database that cannot be opened names the URL.
    kombu("sqlite:///nonexistent-dir/for/sure.db")
        .args(["size", "q"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "sqlite:///nonexistent-dir/for/sure.db",
        ));
}

#[test]
fn errors_are_one_line_even_with_rust_backtrace_set() {
    for (url, shown) in [
        ("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"),
        (
            "amqp://guest:guest@127.0.0.1:1//",
            "amqp://guest:**@127.0.0.1:1//",
        ),
    ] {
        let out = kombu(url)
            .env("RUST_BACKTRACE", "1")
            .args(["size", "jobs"])
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = stderr_of(&out);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("backtrace"), "{stderr}");
        // The URL once, the cause once.
        assert_eq!(stderr.matches("127.0.0.1:1").count(), 1, "{stderr}");
        assert!(stderr.contains(shown), "{stderr}");
        assert_eq!(stderr.matches("refused").count(), 1, "{stderr}");
        // --verbose is what asks for the details.
        let out = kombu(url)
            .args(["--verbose", "size", "jobs"])
            .assert()
            .code(1)
            .get_output()
            .clone();
        assert!(stderr_of(&out).lines().count() > 1, "{}", stderr_of(&out));
    }
}

#[test]
fn connection_refused_names_the_url_without_its_password() {
    kombu("redis://user:hunter2@127.0.0.1:1/0")
        .args(["size", "jobs"])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("127.0.0.1:1")
                .and(predicate::str::contains("hunter2").not())
                .and(predicate::str::contains("refused")),
        );
}

#[test]
fn url_comes_from_the_environment_then_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    let env_url = sqlite_url(dir.path(), "env.db");
    bin()
        .env("KOMBU_URL", &env_url)
        .args(["publish", "--routing-key", "e", "--declare-queue", "e", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("env.db"));
    assert_eq!(size(&env_url, "e"), 1);
    // No --url, no KOMBU_URL: kombu.db in the current directory.
    bin()
        .current_dir(dir.path())
        .args(["declare", "queue", "d"])
        .assert()
        .success();
    assert!(dir.path().join("kombu.db").exists());
}

#[test]
fn the_default_url_is_announced_once_and_memory_says_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    bin()
        .current_dir(dir.path())
        .args(["declare", "queue", "d"])
        .assert()
        .success()
        .stderr("using sqlite://kombu.db (no --url or KOMBU_URL)\n");
    // An explicit URL says nothing.
    kombu(&sqlite_url(dir.path(), "other.db"))
        .args(["declare", "queue", "d"])
        .assert()
        .success()
        .stderr("");
    // What an earlier command declared on memory:// is gone; the error says why.
    declare("memory://", "m");
    for args in [
        &["consume", "--queue", "m", "--timeout", "1"][..],
        &["size", "m"][..],
    ] {
        let out = kombu("memory://")
            .args(args)
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains("memory:// lives only as long as one kombu command"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn library_warnings_reach_stderr_and_rust_log_filters_them() {
    let (dir, sqlite) = setup();
    declare(&sqlite, "w");
    // The first URL is down: the library warns and fails over to the second.
    let failover = format!("redis://127.0.0.1:1/0;{sqlite}");
    let out = kombu(&failover)
        .args(["size", "w"])
        .assert()
        .success()
        .stdout("0\n")
        .get_output()
        .clone();
    assert!(
        stderr_of(&out).contains("trying the next URL"),
        "{}",
        stderr_of(&out)
    );
    let out = kombu(&failover)
        .env("RUST_LOG", "error")
        .args(["size", "w"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(stderr_of(&out), "");
    drop(dir);
}

#[test]
fn completions_and_help() {
    for shell in ["bash", "zsh", "fish"] {
        bin()
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains("kombu").and(predicate::str::contains("publish")));
    }
    for command in [
        "publish",
        "consume",
        "declare",
        "bind",
        "unbind",
        "size",
        "purge",
        "delete",
        "move",
        "bench",
        "completions",
    ] {
        bin()
            .args([command, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Example"));
    }
}
