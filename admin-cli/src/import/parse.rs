//! A key file's lines as import records: CSV under a header row, or JSON lines. A line
//! that cannot be read gives a reason that never quotes a value (it could be a key).

use std::path::Path;

use anyhow::bail;
use keygate_admin::api::import::{ImportRecord, FIELDS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    Csv,
    Jsonl,
}

impl FileFormat {
    /// `.csv` → CSV, `.jsonl` / `.ndjson` → JSON lines.
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(FileFormat::Csv),
            "jsonl" | "ndjson" => Some(FileFormat::Jsonl),
            _ => None,
        }
    }
}

/// One CSV line (RFC 4180 without line breaks inside quotes): fields, or why not.
pub fn split_csv_line(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    loop {
        // At the start of a field.
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed (line breaks inside quotes are not supported)"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(std::mem::take(&mut field));
                    return Ok(fields);
                }
                Some(',') => fields.push(std::mem::take(&mut field)),
                Some(_) => return Err("text after a closing quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(std::mem::take(&mut field));
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(std::mem::take(&mut field));
                        break;
                    }
                    Some('"') => return Err("a quote inside an unquoted field"),
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

/// The column names of a CSV header, checked: known, unique, and enough to import.
pub fn csv_header(line: &str) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = split_csv_line(line)
        .map_err(|e| anyhow::anyhow!("the header row is not valid CSV: {e}"))?
        .into_iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for (i, name) in names.iter().enumerate() {
        if !FIELDS.contains(&name.as_str()) {
            bail!("unknown column {name:?} in the header row (columns: {})", FIELDS.join(", "));
        }
        if names[..i].contains(name) {
            bail!("column {name:?} appears twice in the header row");
        }
    }
    for needed in ["business", "kind", "mode"] {
        if !names.iter().any(|n| n == needed) {
            bail!("the header row has no {needed:?} column");
        }
    }
    if !names.iter().any(|n| n == "key" || n == "key_sha256") {
        bail!("the header row needs a \"key\" or a \"key_sha256\" column");
    }
    Ok(names)
}

/// One data line of a CSV file under `header`.
pub fn csv_record(header: &[String], line: &str) -> Result<ImportRecord, String> {
    let fields = split_csv_line(line).map_err(|e| format!("not valid CSV: {e}"))?;
    if fields.len() != header.len() {
        return Err(format!("expected {} fields, found {}", header.len(), fields.len()));
    }
    let mut record = ImportRecord::default();
    for (name, value) in header.iter().zip(fields) {
        record.set(name, value);
    }
    Ok(record)
}

/// One line of a JSON-lines file: an object of string (or null) fields.
pub fn json_record(line: &str) -> Result<ImportRecord, String> {
    // Parsed as a value first: serde's type errors could quote a value (a key); syntax
    // errors never do, and only the column is kept.
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON (column {})", e.column()))?;
    let serde_json::Value::Object(fields) = value else {
        return Err("not a JSON object".to_owned());
    };
    let mut record = ImportRecord::default();
    for (name, value) in fields {
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            _ => return Err(format!("field {name:?} must be a string")),
        };
        if !record.set(&name, text) {
            let shown: String = name.chars().take(40).collect();
            return Err(format!("unknown field {shown:?} (fields: {})", FIELDS.join(", ")));
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_split_with_quotes() {
        assert_eq!(split_csv_line("a,b,,c").unwrap(), vec!["a", "b", "", "c"]);
        assert_eq!(split_csv_line(r#""a,b","say ""hi""",c"#).unwrap(), vec!["a,b", "say \"hi\"", "c"]);
        assert_eq!(split_csv_line(r#"a,"""#).unwrap(), vec!["a", ""]);
        assert!(split_csv_line(r#"a,"open"#).is_err());
        assert!(split_csv_line(r#"a,"x"y"#).is_err());
        assert!(split_csv_line(r#"a,b"c"#).is_err());
    }

    #[test]
    fn json_lines_refuse_types_and_unknown_fields_without_echoing() {
        assert!(json_record(r#"{"business":"biz_1","kind":"sk","mode":"live","key":"abcdefgh1"}"#).is_ok());
        let reason = json_record(r#"{"key": 12345678901}"#).unwrap_err();
        assert!(reason.contains("must be a string") && !reason.contains("12345678901"), "{reason}");
        assert!(json_record(r#"{"keyy": "x"}"#).unwrap_err().contains("unknown field"));
        let reason = json_record(r#"{"key": "sk_live_secret"#).unwrap_err();
        assert!(reason.starts_with("not valid JSON") && !reason.contains("secret"), "{reason}");
        assert_eq!(json_record("[1]").unwrap_err(), "not a JSON object");
    }
}
