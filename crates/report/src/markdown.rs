//! Markdown rendering of the document. Text (class labels, paths, names)
//! appears literally: every character Markdown or inline HTML would read as
//! markup is backslash-escaped and line breaks become spaces, so a label
//! like `a|b <x> *y*` neither breaks a table nor formats or injects
//! anything. Code blocks stay verbatim inside a long enough fence. Plots are
//! referenced by relative path (`plots/…`).

use std::fmt::Write;

use crate::document::{Align, Block, Inline, Table};

pub(crate) fn render(doc: &[Block]) -> String {
    let blocks: Vec<String> = doc.iter().map(block).collect();
    let mut out = blocks.join("\n\n");
    out.push('\n');
    out
}

fn block(b: &Block) -> String {
    match b {
        Block::Heading(level, text) => format!("{} {}", "#".repeat(usize::from(*level)), one_line(text)),
        Block::Paragraph(inlines) => inline(inlines),
        Block::Warning(text) => format!("> **Warning: {}**", one_line(text)),
        Block::List(items) => items.iter().map(|i| format!("- {}", inline(i))).collect::<Vec<_>>().join("\n"),
        Block::Table(t) => table(t),
        Block::Image { plot, alt } => format!("![{}]({})", one_line(alt), plot.relative_path()),
        Block::Code { language, text, .. } => code(language, text),
    }
}

fn inline(inlines: &[Inline]) -> String {
    inlines
        .iter()
        .map(|i| match i {
            Inline::Text(t) => one_line(t),
            Inline::Strong(t) => format!("**{}**", one_line(t)),
        })
        .collect()
}

/// Text as literal Markdown on one line: line breaks (which would end the
/// paragraph, heading or table row) become spaces, and the characters that
/// are markup (emphasis, code, links, inline HTML, entities, table cells,
/// escapes) get a backslash.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\r' | '\n' => out.push(' '),
            '\\' | '|' | '<' | '>' | '*' | '_' | '`' | '[' | ']' | '&' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn table(t: &Table) -> String {
    let row = |cells: &[String]| format!("| {} |", cells.iter().map(|c| one_line(c)).collect::<Vec<_>>().join(" | "));
    let rule: Vec<String> = t.align.iter().map(|a| if *a == Align::Right { "---:" } else { "---" }.into()).collect();
    let mut out = row(&t.header);
    let _ = write!(out, "\n|{}|", rule.join("|"));
    for r in &t.rows {
        out.push('\n');
        out.push_str(&row(r));
    }
    out
}

/// A fenced block whose fence is longer than any run of backticks inside.
fn code(language: &str, text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let body = text.strip_suffix('\n').unwrap_or(text);
    format!("{fence}{language}\n{body}\n{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_outlasts_backticks_inside() {
        assert_eq!(code("toml", "a = 1\n"), "```toml\na = 1\n```");
        assert_eq!(code("toml", "x = \"````\""), "`````toml\nx = \"````\"\n`````");
    }

    #[test]
    fn cells_escape_markup_and_newlines() {
        assert_eq!(one_line("<b>&"), "\\<b\\>\\&");
        assert_eq!(one_line("a|b\nc"), "a\\|b c");
        assert_eq!(one_line("a|b,\"c\"<x>\n*y*"), "a\\|b,\"c\"\\<x\\> \\*y\\*");
        assert_eq!(one_line(r"_[`x`](u)\"), r"\_\[\`x\`\](u)\\");
        assert_eq!(one_line("plain label, é 1.5"), "plain label, é 1.5");
    }
}
