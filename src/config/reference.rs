//! The configuration reference in the book (`docs/configuration.md`), made
//! from the flags' own definitions: a flag, environment name, default or
//! description that changes changes the reference, and a test fails until the
//! committed copy is regenerated (`UPDATE_DOCS=1 cargo test --test docs`).

use clap::CommandFactory;

use super::Cli;

/// The tables of `inferd serve`'s flags, one per group, in Markdown.
pub fn reference() -> String {
    let cli = Cli::command();
    let Some(serve) = cli.find_subcommand("serve") else {
        return String::new();
    };
    let mut out = String::new();
    let mut heading: Option<&str> = None;
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let group = arg.get_help_heading().unwrap_or("Options");
        if heading != Some(group) {
            heading = Some(group);
            out += &format!(
                "\n## {group}\n\n| flag | environment | default | meaning |\n|---|---|---|---|\n"
            );
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let default = if defaults.is_empty() {
            "none".to_string()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let mut meaning = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !meaning.ends_with('.') {
            meaning.push('.');
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| match v.get_help() {
                Some(h) => format!("`{}`: {}", v.get_name(), h),
                None => format!("`{}`", v.get_name()),
            })
            .collect();
        if !values.is_empty() {
            meaning += &format!(" Values: {}.", values.join("; "));
        }
        let aliases = arg.get_all_aliases().unwrap_or_default();
        if !aliases.is_empty() {
            let names: Vec<String> = aliases.iter().map(|a| format!("`--{a}`")).collect();
            meaning += &format!(" Also spelled {}.", names.join(", "));
        }
        out += &format!(
            "| `--{long}` | {env} | {default} | {} |\n",
            meaning.replace('|', "\\|")
        );
    }
    out
}
