//! Self-contained HTML rendering of the document: inline CSS, plots embedded
//! as `data:image/png;base64,…`, no external reference of any kind. Every
//! piece of input text is escaped.

use base64::Engine;

use crate::document::{Align, Block, Inline, Table};

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:1.5em 2em 3em;background:#fff}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}
h2{margin-top:2em;border-bottom:1px solid #eee;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0}
th,td{border:1px solid #ccc;padding:.3em .7em;vertical-align:top}
th{background:#f0f0f0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
.warning{background:#fdecea;border:2px solid #c0392b;color:#7b1e14;padding:.8em 1em;border-radius:4px}
figure{margin:1em 0}
img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto}
summary{cursor:pointer;font-weight:600}
";

pub(crate) fn render(title: &str, doc: &[Block]) -> String {
    let body: Vec<String> = doc.iter().map(block).collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<main>\n{}\n</main>\n</body>\n</html>\n",
        escape(title),
        body.join("\n")
    )
}

/// Escapes text for element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn block(b: &Block) -> String {
    match b {
        Block::Heading(level, text) => format!("<h{level}>{}</h{level}>", escape(text)),
        Block::Paragraph(inlines) => format!("<p>{}</p>", inline(inlines)),
        Block::Warning(text) => format!("<p class=\"warning\"><strong>Warning: {}</strong></p>", escape(text)),
        Block::List(items) => {
            let items: String = items.iter().map(|i| format!("<li>{}</li>", inline(i))).collect();
            format!("<ul>{items}</ul>")
        }
        Block::Table(t) => table(t),
        Block::Image { plot, alt } => image(&plot.png, alt),
        Block::Code { title, text, .. } => {
            format!(
                "<details>\n<summary>{}</summary>\n<pre><code>{}</code></pre>\n</details>",
                escape(title),
                escape(text)
            )
        }
    }
}

fn inline(inlines: &[Inline]) -> String {
    inlines
        .iter()
        .map(|i| match i {
            Inline::Text(t) => escape(t),
            Inline::Strong(t) => format!("<strong>{}</strong>", escape(t)),
        })
        .collect()
}

fn image(png: &[u8], alt: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(png);
    let alt = escape(alt);
    format!("<figure><img alt=\"{alt}\" src=\"data:image/png;base64,{data}\"><figcaption>{alt}</figcaption></figure>")
}

fn table(t: &Table) -> String {
    let class = |i: usize| if t.align.get(i) == Some(&Align::Right) { " class=\"num\"" } else { "" };
    let row = |cells: &[String], tag: &str| {
        let cells: String =
            cells.iter().enumerate().map(|(i, c)| format!("<{tag}{}>{}</{tag}>", class(i), escape(c))).collect();
        format!("<tr>{cells}</tr>")
    };
    let body: Vec<String> = t.rows.iter().map(|r| row(r, "td")).collect();
    format!("<table>\n<thead>{}</thead>\n<tbody>\n{}\n</tbody>\n</table>", row(&t.header, "th"), body.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(escape(r#"<b>&"x"'"#), "&lt;b&gt;&amp;&quot;x&quot;&#39;");
    }
}
