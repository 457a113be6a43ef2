//! Values from the environment: `${NAME}` in any string of the config file is replaced by
//! the variable `NAME`, so passwords, signing keys and tokens need not sit in the file.
//! `$${` writes a literal `${`. A missing variable is an error naming it and the key.

use std::fmt::Write as _;

use super::ConfigError;

/// A config value that came from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromEnv {
    /// Where in the config, for example `subscription[0].kafka.options."sasl.password"`.
    pub key: String,
    /// The variables it was made of.
    pub vars: Vec<String>,
}

/// Replace `${NAME}` in every string of `table` by `lookup(NAME)`; returns what was replaced.
pub(crate) fn interpolate(
    table: &mut toml::Table,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<FromEnv>, ConfigError> {
    let mut found = Vec::new();
    for (key, value) in table.iter_mut() {
        walk(value, &key_part(key), lookup, &mut found)?;
    }
    Ok(found)
}

fn walk(
    value: &mut toml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Vec<FromEnv>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(text) if text.contains('$') => {
            let (expanded, vars) = expand(text, path, lookup)?;
            if !vars.is_empty() {
                found.push(FromEnv {
                    key: path.to_string(),
                    vars,
                });
            }
            *text = expanded;
        }
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                walk(inner, &format!("{path}.{}", key_part(key)), lookup, found)?;
            }
        }
        toml::Value::Array(items) => {
            for (i, inner) in items.iter_mut().enumerate() {
                walk(inner, &format!("{path}[{i}]"), lookup, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A key as written in TOML: bare when it can be, quoted otherwise.
fn key_part(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

fn expand(
    text: &str,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut vars = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(invalid(key, "a `${` without its closing `}`"));
            };
            let name = &tail[..end];
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(invalid(
                    key,
                    &format!("`${{{name}}}` is not a variable name (letters, digits, _)"),
                ));
            }
            let value = lookup(name).ok_or_else(|| ConfigError::MissingEnv {
                key: key.to_string(),
                var: name.to_string(),
            })?;
            out.push_str(&value);
            vars.push(name.to_string());
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok((out, vars))
}

fn invalid(key: &str, what: &str) -> ConfigError {
    let mut message = format!("{key}: {what}");
    let _ = write!(message, " (write `$${{` for a literal `${{`)");
    ConfigError::Invalid(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PASSWORD" => Some("s3cret".into()),
            "HOST" => Some("kafka.example".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<(toml::Table, Vec<FromEnv>), ConfigError> {
        let mut table: toml::Table = toml::from_str(text).unwrap();
        let found = interpolate(&mut table, &lookup)?;
        Ok((table, found))
    }

    #[test]
    fn variables_are_replaced_in_any_string_and_recorded() {
        let (table, found) = run(
            "[[subscription]]\n[subscription.kafka]\nbrokers = \"${HOST}:9092\"\n[subscription.kafka.options]\n\"sasl.password\" = \"${PASSWORD}\"\n",
        )
        .unwrap();
        let kafka = &table["subscription"][0]["kafka"];
        assert_eq!(kafka["brokers"].as_str(), Some("kafka.example:9092"));
        assert_eq!(kafka["options"]["sasl.password"].as_str(), Some("s3cret"));
        assert_eq!(
            found,
            [
                FromEnv {
                    key: "subscription[0].kafka.brokers".into(),
                    vars: vec!["HOST".into()]
                },
                FromEnv {
                    key: "subscription[0].kafka.options.\"sasl.password\"".into(),
                    vars: vec!["PASSWORD".into()]
                },
            ]
        );
    }

    #[test]
    fn a_missing_variable_names_itself_and_the_key() {
        let error = run("[admin]\ntoken = \"${ADMIN_TOKEN}\"\n").unwrap_err().to_string();
        assert!(
            error.contains("ADMIN_TOKEN") && error.contains("admin.token"),
            "{error}"
        );
    }

    #[test]
    fn dollars_that_are_not_variables_stay() {
        let (table, found) = run("a = \"cost: $5, $${LITERAL}\"\n").unwrap();
        assert_eq!(table["a"].as_str(), Some("cost: $5, ${LITERAL}"));
        assert!(found.is_empty());
        let error = run("a = \"${not closed\"\n").unwrap_err().to_string();
        assert!(error.contains("closing"), "{error}");
        let error = run("a = \"${1X}\"\n").unwrap_err().to_string();
        assert!(error.contains("not a variable name"), "{error}");
    }
}
