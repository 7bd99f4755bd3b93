//! The configuration's own checks: parsing, defaults, redaction.

use super::*;

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact_url("postgres://u:p4ss@db:5432/x"),
        "postgres://u:***@db:5432/x"
    );
    assert_eq!(redact_url("redis://:pw@r:6379/0"), "redis://:***@r:6379/0");
    assert_eq!(redact_url("redis://r:6379"), "redis://r:6379");
    let cli = Cli::try_parse_from(["inferd", "--database-url", "postgres://a:secret@h/d"]).unwrap();
    assert!(!cli.serve.redacted().to_string().contains("secret"));
    let cli = Cli::try_parse_from(["inferd", "--api-keys", "k1-secret,k2-secret"]).unwrap();
    let shown = cli.serve.redacted().to_string();
    assert!(
        !shown.contains("secret") && shown.contains("<2 keys>"),
        "{shown}"
    );
}

#[test]
fn defaults_parse_and_validate() {
    let cli = Cli::try_parse_from(["inferd"]).expect("defaults parse");
    assert!(cli.command.is_none());
    assert_eq!(cli.serve.limits.max_queue, 512);
    assert!(cli.serve.validate().is_ok());
    assert!(cli.serve.limits.concurrency() >= 1);
}

#[test]
fn zero_limits_are_rejected() {
    let cli = Cli::try_parse_from(["inferd", "serve", "--max-instances", "0"]).expect("parse");
    let Some(Command::Serve(cfg)) = cli.command else {
        panic!("serve subcommand expected")
    };
    assert!(cfg.validate().unwrap_err().contains("max-instances"));
}
