//! What the book says that the code defines, kept equal to it: the
//! configuration reference is generated from the flags' own definitions (as
//! `docs/openapi.json` is from the routes'), and fails here when the
//! committed copy differs. `UPDATE_DOCS=1 cargo test --test docs` rewrites it.
//! Links, anchors and the documented commands are checked by
//! `tests/docs/check_docs.py` (`make check`, `make test`).

use std::path::PathBuf;

const BEGIN: &str = "<!-- generated: begin -->";
const END: &str = "<!-- generated: end -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_configuration_reference_is_the_flags() {
    let path = root().join("docs/configuration.md");
    let committed = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let (head, rest) = committed.split_once(BEGIN).expect("the begin marker");
    let (_, tail) = rest.split_once(END).expect("the end marker");
    let generated = format!(
        "{head}{BEGIN}\n{}\n{END}{tail}",
        inferd::config::reference()
    );
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).expect("write");
    }
    assert!(
        committed == generated,
        "docs/configuration.md is out of date: run `UPDATE_DOCS=1 cargo test --test docs`"
    );
}

#[test]
fn every_flag_has_a_row_with_its_environment_name_and_default() {
    let reference = inferd::config::reference();
    for (flag, env, default) in [
        ("--listen", "`INFERD_LISTEN`", "`0.0.0.0:8080`"),
        ("--max-queue", "`INFERD_MAX_QUEUE`", "`512`"),
        ("--cache", "`INFERD_CACHE`", "`on`"),
        ("--ort-dylib-path", "`ORT_DYLIB_PATH`", "none"),
    ] {
        let row = reference
            .lines()
            .find(|l| l.starts_with(&format!("| `{flag}` |")))
            .unwrap_or_else(|| panic!("no row for {flag}"));
        assert!(row.contains(env) && row.contains(default), "{row}");
    }
    let rows = reference.lines().filter(|l| l.starts_with("| `--")).count();
    let flags = {
        use clap::CommandFactory;
        let cli = inferd::config::Cli::command();
        cli.find_subcommand("serve")
            .expect("serve")
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
            .count()
    };
    assert_eq!(rows, flags, "one row per flag of `inferd serve`");
}
