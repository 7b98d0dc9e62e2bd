//! Markdown rendering of the document. Text appears verbatim; only what
//! would break the structure (a `|` or a line break inside a table cell or
//! heading) is escaped. Plots are referenced by relative path (`plots/…`).

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

/// Line breaks would end the paragraph, heading or table row.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

fn table(t: &Table) -> String {
    let row = |cells: &[String]| format!("| {} |", cells.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
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
    fn cells_keep_text_but_not_pipes_or_newlines() {
        assert_eq!(cell("<b>&"), "<b>&");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
