//! Email text for the text classifier: a raw RFC 822 message becomes its subject
//! and the text of its `text/plain` and `text/html` parts, as one line of plain
//! text. This is the Rust form of `clean()` in `training/train_text.py`, on whose
//! output the shipped `text-classifier` was trained, and it follows that function
//! except where noted at `clean`.
//!
//! Input that is not a message (a single line, or a first line that is no header)
//! goes through the same whitespace and length rules only, so text that is
//! already clean comes back unchanged.

use std::borrow::Cow;

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{HeaderName, Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// Cleans one raw message (or plain text) to at most `truncate_chars` characters
/// (Unicode scalar values) of text with single spaces, no NUL and no leading or
/// trailing whitespace: the subject, then every `text/plain` and `text/html` part
/// in the order Python's `Message.walk()` visits them, HTML tags replaced by
/// spaces and character references decoded as `html.unescape` does.
///
/// Where this differs from the Python `clean()`, on purpose:
/// - An RFC 2047 encoded subject is decoded (Python kept `=?...?=` as it was).
/// - Body text that came as characters (no base64 or quoted-printable) is taken
///   as it is; Python re-encoded it to bytes, turning any character above U+00FF
///   into a literal `\uXXXX`, and decoded those with the declared charset.
/// - Charsets are mail-parser's (WHATWG) tables: `iso-8859-1` and `us-ascii` read
///   0x80..0x9F as windows-1252 (Python: C1 controls, or U+FFFD for us-ascii), and
///   the CJK tables differ in a few code points. An unknown or missing charset
///   reads valid UTF-8 as UTF-8 and anything else as latin-1 (Python: latin-1).
/// - A single line is plain text even when it looks like a header ("Re: lunch").
/// - NUL goes before whitespace is collapsed, and the text is trimmed again after
///   the cut, so no double or trailing space is left; cleaning is idempotent.
/// - A base64 or quoted-printable `message/rfc822` part (which RFC 2046 forbids)
///   adds nothing; Python added its encoded text.
/// - Beyond `MAX_CONTAINERS` multipart containers the input is cut.
pub fn clean(raw: &str, truncate_chars: usize) -> String {
    // mail-parser panics on some malformed structures (a `multipart/digest`
    // whose `message/rfc822` part is empty: "Invalid part ID"), found by the
    // property tests. A client's text must never take the handler down, so a
    // panic there reads the input as plain text, as any other unparsable
    // message is read.
    let parsed = std::panic::catch_unwind(|| message_text(raw)).unwrap_or_else(|_| {
        parser_panicked();
        None
    });
    match parsed {
        Some(text) => normalize(&text, truncate_chars),
        None => normalize(raw, truncate_chars),
    }
}

/// One warning per interval, with the count held back: the input is a
/// client's, and the same one may come again and again.
fn parser_panicked() {
    use inferd_telemetry::ratelimit::{every, Every};
    use std::sync::LazyLock;
    static PANICKED: LazyLock<Every> = every!("email parser panicked");
    if let Some(suppressed) = PANICKED.tick() {
        tracing::warn!(
            suppressed,
            "the email parser panicked on an input; read as plain text"
        );
    }
}

/// `subject + "\n\n" + bodies joined by " "`, or `None` when `raw` is to be read
/// as plain text.
fn message_text(raw: &str) -> Option<String> {
    let input = prepare(raw)?;
    let input = cap_containers(&input);
    // Only the headers this needs are parsed. Content-Transfer-Encoding is
    // skipped too, and decoded here from the raw bytes: mail-parser would then
    // parse a base64 `message/rfc822` part out of its decoded bytes, recursively,
    // where no cap on the input reaches (and Python does not decode those either).
    // Skipping the rest also keeps a malformed Date or Received header from
    // reading past the end of the header block.
    let message = MessageParser::new()
        .header_content_type(HeaderName::ContentType)
        .header_text(HeaderName::Subject)
        .ignore_header(HeaderName::ContentTransferEncoding)
        .default_header_ignore()
        .parse(input.as_bytes())?;
    // Python takes the first Subject; mail-parser's `subject()` the last.
    let subject = message
        .parts
        .first()
        .and_then(|root| root.headers.iter().find(|h| h.name == HeaderName::Subject))
        .and_then(|h| h.value.as_text())
        .unwrap_or("");
    let mut text = String::with_capacity(input.len());
    text.push_str(subject);
    text.push_str("\n\n");
    let mut first = true;
    for_each_text_part(&message, |body, is_html| {
        if !first {
            text.push(' ');
        }
        first = false;
        if is_html {
            text.push_str(&unescape_html(&strip_tags(body)));
        } else {
            text.push_str(body);
        }
    });
    drop_flat(message);
    Some(text)
}

/// Drops a message without recursing: attached messages nest as deep as the input
/// says, and dropping them the default way takes a stack frame per level.
fn drop_flat(message: Message<'_>) {
    let mut pending = vec![message];
    while let Some(mut message) = pending.pop() {
        for part in message.parts.drain(..) {
            if let PartType::Message(inner) = part.body {
                pending.push(inner);
            }
        }
    }
}

/// The input as mail-parser should see it to split it where Python's parser does,
/// or `None` when it is plain text.
fn prepare(raw: &str) -> Option<Cow<'_, str>> {
    // Cleaned text is a single line, and a single line such as "Re: lunch" would
    // otherwise parse as a header with no body: reading it as text is what makes
    // cleaning idempotent.
    if !raw.contains(['\n', '\r']) {
        return None;
    }
    // Python ends a line at "\r" too; mail-parser only at "\n".
    let bytes = raw.as_bytes();
    let lone_cr = |i: usize| bytes.get(i) == Some(&b'\r') && bytes.get(i + 1) != Some(&b'\n');
    let raw: Cow<'_, str> = if (0..bytes.len()).any(lone_cr) {
        let fixed = raw
            .char_indices()
            .map(|(i, c)| if lone_cr(i) { '\n' } else { c });
        Cow::Owned(fixed.collect())
    } else {
        Cow::Borrowed(raw)
    };
    match header_block_end(&raw)? {
        None => Some(raw),
        // Python starts the body at the first line that is no header; mail-parser
        // would skip that line and read on for headers.
        Some(at) => {
            let mut fixed = String::with_capacity(raw.len() + 1);
            fixed.push_str(raw.get(..at)?);
            fixed.push('\n');
            fixed.push_str(raw.get(at..)?);
            Some(Cow::Owned(fixed))
        }
    }
}

/// The most multipart containers parsed in one message; the rest of the input,
/// from the line where the next one is declared, is left out. Real mail has a
/// handful (the corpus at most 9), and mail-parser scans to the end of the input
/// for each one whose boundary never comes: the cap keeps that linear.
const MAX_CONTAINERS: usize = 100;

/// `raw` up to the line that declares its `MAX_CONTAINERS + 1`-th multipart. The
/// type must spell "multipart" in one piece (any case) for mail-parser to see a
/// container; counting the word wherever it stands can only cut sooner.
fn cap_containers(raw: &str) -> &str {
    let bytes = raw.as_bytes();
    let mut seen = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (b == b'm' || b == b'M') && starts_with_ignore_case(&bytes[i..], b"multipart") {
            seen += 1;
            if seen > MAX_CONTAINERS {
                let line_start = bytes[..i]
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |p| p + 1);
                return &raw[..line_start];
            }
        }
    }
    raw
}

fn starts_with_ignore_case(bytes: &[u8], word: &[u8]) -> bool {
    bytes
        .get(..word.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(word))
}

/// Where Python's `email.feedparser` ends the top-level header block: at the first
/// line that does not match `^(From |[\041-\071\073-\176]*:|[\t ])`. `None`: the
/// first line is no header, so the whole input is body; `Some(None)`: a blank
/// line or the end closes the block; `Some(Some(at))`: the body starts at `at`
/// with no blank line before it.
fn header_block_end(raw: &str) -> Option<Option<usize>> {
    let mut at = 0;
    for line in raw.split_inclusive('\n') {
        let content = line.trim_end_matches(['\r', '\n']);
        if content.is_empty() || !is_header_line(content) {
            return match (at, content.is_empty()) {
                (0, _) => None,
                (_, true) => Some(None),
                (_, false) => Some(Some(at)),
            };
        }
        at += line.len();
    }
    Some(None)
}

fn is_header_line(line: &str) -> bool {
    if line.starts_with("From ") || line.starts_with([' ', '\t']) {
        return true;
    }
    for b in line.bytes() {
        match b {
            b':' => return true,
            0x21..=0x7e => {}
            _ => return false,
        }
    }
    false
}

/// Calls `f(text, is_html)` for every `text/plain` and `text/html` part, in the
/// order Python's `Message.walk()` visits them: depth first, through nested
/// multiparts and into attached `message/rfc822` messages.
fn for_each_text_part(message: &Message<'_>, mut f: impl FnMut(&str, bool)) {
    // An explicit stack: attached messages nest as deep as the input says.
    let mut stack: Vec<(&Message<'_>, usize)> = vec![(message, 0)];
    while let Some((msg, index)) = stack.pop() {
        let Some(part) = msg.parts.get(index) else {
            continue;
        };
        stack.push((msg, index + 1));
        match &part.body {
            PartType::Message(inner) => stack.push((inner, 0)),
            PartType::Text(_) | PartType::Html(_) => {
                let is_html = match part.content_type() {
                    None => false,
                    Some(ct) if ct.ctype().eq_ignore_ascii_case("text") => match ct.subtype() {
                        Some(s) if s.eq_ignore_ascii_case("plain") => false,
                        Some(s) if s.eq_ignore_ascii_case("html") => true,
                        _ => continue,
                    },
                    Some(_) => continue,
                };
                // Attached messages are parsed in place, so every offset is into
                // the one input.
                f(&part_text(part, &message.raw_message), is_html);
            }
            PartType::Binary(_) | PartType::InlineBinary(_) | PartType::Multipart(_) => {}
        }
    }
}

/// The text of one part: its body as it stands in the input, transfer-decoded as
/// Python's `get_payload(decode=True)` does and read under its charset.
fn part_text<'a>(part: &MessagePart<'_>, input: &'a [u8]) -> Cow<'a, str> {
    let body = input
        .get(part.offset_body as usize..part.offset_end as usize)
        .unwrap_or_default();
    // Python takes the first header of a name; mail-parser's lookups the last.
    let cte = part
        .headers
        .iter()
        .find(|h| h.name == HeaderName::ContentTransferEncoding)
        .and_then(|h| input.get(h.offset_start as usize..h.offset_end as usize))
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    let charset = part.content_type().and_then(|ct| ct.attribute("charset"));
    let bytes = if cte.eq_ignore_ascii_case(b"base64") {
        lenient_base64(body)
    } else if cte.eq_ignore_ascii_case(b"quoted-printable") {
        lenient_quoted_printable(body)
    } else {
        // The caller's characters are already text: decoding their UTF-8 bytes
        // again with the declared charset would garble them.
        return String::from_utf8_lossy(body);
    };
    Cow::Owned(decode_charset(&bytes, charset).into_owned())
}

fn is_utf8_label(charset: &str) -> bool {
    charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
}

/// Bytes to text under a declared charset. An unknown or missing charset reads
/// as UTF-8 where the bytes are valid UTF-8 and as latin-1 otherwise, as Python's
/// `part_text` falls back to latin-1 (which never fails).
fn decode_charset<'a>(bytes: &'a [u8], charset: Option<&str>) -> Cow<'a, str> {
    if let Some(label) = charset {
        if is_utf8_label(label) {
            return String::from_utf8_lossy(bytes);
        }
        if let Some(decode) = charset_decoder(label.as_bytes()) {
            return Cow::Owned(decode(bytes));
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// Base64 decoding that never fails, following Python's `binascii.a2b_base64`:
/// characters outside the alphabet are skipped, and the data ends at the first
/// padding that closes a group (a mailing-list footer often follows it).
fn lenient_base64(raw: &[u8]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(raw.len());
    let mut in_group = 0;
    for &b in raw {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' {
            kept.push(b);
            in_group = (in_group + 1) % 4;
        } else if b == b'=' && in_group >= 2 {
            break;
        }
    }
    // Only alphabet characters are left, which mail-parser always decodes.
    base64_decode(&kept).unwrap_or_default()
}

/// Quoted-printable decoding that never fails, following Python's
/// `binascii.a2b_qp`: "=XX" is a byte, "=" before a line end joins the lines,
/// "==" is "=", and any other "=" stays as it is.
fn lenient_quoted_printable(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        i += 1;
        if b != b'=' {
            out.push(b);
            continue;
        }
        match (raw.get(i), raw.get(i + 1)) {
            (None, _) => {}
            (Some(b'\n'), _) => i += 1,
            (Some(b'\r'), _) => {
                while raw.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
                i += 1;
            }
            (Some(b'='), _) => {
                out.push(b'=');
                i += 1;
            }
            (Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                out.push(hex_value(h) << 4 | hex_value(l));
                i += 2;
            }
            _ => out.push(b'='),
        }
    }
    out
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Replaces every tag (`<[^>]*>`, as in Python) with a space.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            // No '>' anywhere after this '<': no later '<' has one either.
            break;
        };
        out.push_str(&rest[..open]);
        out.push(' ');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Named references HTML5 also accepts without the ';' (and as prefixes), as
/// Python's `html.unescape` does. Sorted by bytes, for the binary search.
const LEGACY_ENTITIES: [&str; 106] = [
    "AElig", "AMP", "Aacute", "Acirc", "Agrave", "Aring", "Atilde", "Auml", "COPY", "Ccedil",
    "ETH", "Eacute", "Ecirc", "Egrave", "Euml", "GT", "Iacute", "Icirc", "Igrave", "Iuml", "LT",
    "Ntilde", "Oacute", "Ocirc", "Ograve", "Oslash", "Otilde", "Ouml", "QUOT", "REG", "THORN",
    "Uacute", "Ucirc", "Ugrave", "Uuml", "Yacute", "aacute", "acirc", "acute", "aelig", "agrave",
    "amp", "aring", "atilde", "auml", "brvbar", "ccedil", "cedil", "cent", "copy", "curren", "deg",
    "divide", "eacute", "ecirc", "egrave", "eth", "euml", "frac12", "frac14", "frac34", "gt",
    "iacute", "icirc", "iexcl", "igrave", "iquest", "iuml", "laquo", "lt", "macr", "micro",
    "middot", "nbsp", "not", "ntilde", "oacute", "ocirc", "ograve", "ordf", "ordm", "oslash",
    "otilde", "ouml", "para", "plusmn", "pound", "quot", "raquo", "reg", "sect", "shy", "sup1",
    "sup2", "sup3", "szlig", "thorn", "times", "uacute", "ucirc", "ugrave", "uml", "uuml",
    "yacute", "yen", "yuml",
];

fn named_entity(name: &str) -> Option<&'static str> {
    let table = &html_escape::NAMED_ENTITIES;
    table
        .binary_search_by(|(n, _)| (*n).cmp(name.as_bytes()))
        .ok()
        .and_then(|i| table.get(i))
        .map(|(_, value)| *value)
}

fn legacy_entity(name: &str) -> Option<&'static str> {
    LEGACY_ENTITIES
        .binary_search(&name)
        .ok()
        .and_then(|_| named_entity(name))
}

/// Windows-1252 characters for references to 0x80..=0x9F, as browsers (and
/// Python) read them.
const C1_REFERENCES: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

/// What a numeric reference stands for, following Python's `html.unescape`.
fn numeric_reference(number: u32, out: &mut String) {
    match number {
        0 => out.push('\u{fffd}'),
        0x0d => out.push('\r'),
        0x80..=0x9f => {
            if let Some(&c) = C1_REFERENCES.get((number - 0x80) as usize) {
                out.push(c);
            }
        }
        0xd800..=0xdfff | 0x11_0000.. => out.push('\u{fffd}'),
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => {}
        n if n & 0xfffe == 0xfffe => {}
        n => {
            if let Some(c) = char::from_u32(n) {
                out.push(c);
            }
        }
    }
}

/// Decodes character references exactly as Python's `html.unescape` does (the
/// text model was trained on its output): numeric ones with or without ';',
/// named ones from the HTML5 table, and the legacy names also without ';' and as
/// the longest prefix of a longer name.
fn unescape_html(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = text[at..].find('&') {
        let amp = at + found;
        at = amp + 1;
        let Some(end) = reference_at(text, amp, &mut out, copied) else {
            continue;
        };
        copied = end;
        at = end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// If a reference starts at `amp`, appends the text since `copied` and its
/// replacement to `out` and returns where the reference ends.
fn reference_at(text: &str, amp: usize, out: &mut String, copied: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let start = amp + 1;
    if bytes.get(start) == Some(&b'#') {
        let (digits_start, radix) = match bytes.get(start + 1) {
            Some(b'x' | b'X') => (start + 2, 16),
            _ => (start + 1, 10),
        };
        let digits_len = bytes[digits_start.min(bytes.len())..]
            .iter()
            .take_while(|b| {
                if radix == 16 {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if digits_len == 0 {
            return None;
        }
        let digits = &text[digits_start..digits_start + digits_len];
        let number = digits.chars().fold(0u32, |n, c| {
            let digit = c.to_digit(radix).unwrap_or(0);
            n.saturating_mul(radix).saturating_add(digit)
        });
        let mut end = digits_start + digits_len;
        if bytes.get(end) == Some(&b';') {
            end += 1;
        }
        out.push_str(&text[copied..amp]);
        numeric_reference(number, out);
        return Some(end);
    }
    // `[^\t\n\f <&#;]{1,32};?`: at most 32 characters, not bytes.
    let name_len: usize = text[start..]
        .chars()
        .take(32)
        .take_while(|c| !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'))
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let name = &text[start..start + name_len];
    let has_semicolon = bytes.get(start + name_len) == Some(&b';');
    let end = start + name_len + usize::from(has_semicolon);
    let whole = if has_semicolon {
        named_entity(name)
    } else {
        legacy_entity(name)
    };
    if let Some(value) = whole {
        out.push_str(&text[copied..amp]);
        out.push_str(value);
        return Some(end);
    }
    // The longest legacy name that the reference starts with, at least two
    // characters long; the rest of the reference stays as it was.
    let reference = &text[start..end];
    let prefix = reference
        .char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i >= 2)
        .rev()
        .find_map(|i| legacy_entity(&reference[..i]).map(|value| (i, value)));
    let (len, value) = prefix?;
    out.push_str(&text[copied..amp]);
    out.push_str(value);
    Some(start + len)
}

/// Python's `str.isspace()`, which its `\s` matches: Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.isspace()` for an ASCII byte: `\t \n \v \f \r`, the
/// information separators 0x1C..0x1F, and the space.
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | 0x1c..=0x1f | b' ')
}

/// Drops NUL, collapses whitespace runs to one space, trims, and keeps at most
/// `limit` characters, trimming again after the cut.
///
/// Python removes NUL after collapsing and does not trim after cutting, which
/// leaves a double space where a NUL stood between two spaces and a trailing
/// space when the cut falls after one; neither survives a second cleaning here.
///
/// Runs of ASCII that is neither space nor NUL are copied whole: a character at
/// a time, this was a tenth of a text request's instructions outside ONNX
/// Runtime. The tests hold it to the character-at-a-time rule it replaced.
fn normalize(text: &str, limit: usize) -> String {
    let mut out = String::with_capacity(text.len().min(limit.saturating_mul(4)));
    let bytes = text.as_bytes();
    let mut count = 0;
    let mut pending_space = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        // The next piece to keep: a run of plain ASCII, or one other character.
        let (end, chars) = if b == 0 {
            i += 1;
            continue;
        } else if is_ascii_space(b) {
            pending_space = !out.is_empty();
            i += 1;
            continue;
        } else if b.is_ascii() {
            let run = bytes[i..]
                .iter()
                .position(|&b| b == 0 || !b.is_ascii() || is_ascii_space(b))
                .map_or(bytes.len(), |n| i + n);
            (run, run - i)
        } else {
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            if is_space(c) {
                pending_space = !out.is_empty();
                i += c.len_utf8();
                continue;
            }
            (i + c.len_utf8(), 1)
        };
        if pending_space {
            if count + 1 >= limit {
                break;
            }
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        let room = limit.saturating_sub(count);
        if chars > room {
            // Only an ASCII run is longer than one character: bytes are characters.
            out.push_str(&text[i..i + room]);
            break;
        }
        out.push_str(&text[i..end]);
        count += chars;
        i = end;
    }
    out
}

#[cfg(test)]
#[path = "email_tests.rs"]
mod tests;
