//! Just enough of the Kconfig language to explain a rejected option: where each symbol is
//! defined (which architecture), its type, whether it has a prompt, its `depends on`
//! (including the enclosing `if` and `menu … depends on` of the same file), and who
//! `select`s it. Not a Kconfig implementation: `make olddefconfig` decides; this only
//! explains. Dependencies inherited through a `source` line from the parent file are not
//! followed (the explanation then says less, never something wrong).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A symbol's type, from `bool`/`tristate`/`string`/`int`/`hex` or `def_bool`/`def_tristate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolType {
    Bool,
    Tristate,
    String,
    Int,
    Hex,
}

/// One `config`/`menuconfig` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolDefinition {
    pub symbol: String,
    /// Path relative to the source root, e.g. `drivers/net/Kconfig`.
    pub file: String,
    pub line: usize,
    pub symbol_type: Option<SymbolType>,
    pub has_prompt: bool,
    /// Every `depends on` expression, the enclosing `if`/`menu` ones first.
    pub depends_on: Vec<String>,
    /// Symbols this block `select`s.
    pub selects: Vec<String>,
}

impl SymbolDefinition {
    /// `Some("x86")` when defined under `arch/x86/`, `None` when architecture-independent.
    pub fn architecture_dir(&self) -> Option<&str> {
        self.file
            .strip_prefix("arch/")
            .and_then(|rest| rest.split('/').next())
    }
}

#[derive(Debug)]
enum Block {
    None,
    Config(SymbolDefinition),
    /// A `menu`; its `depends on` go onto the context stack entry at this index.
    Menu(usize),
    Other,
}

/// Parses one Kconfig file. `file` is the path relative to the source root.
pub fn parse_kconfig(file: &str, text: &str) -> Vec<SymbolDefinition> {
    let mut definitions = Vec::new();
    // Each entry: the condition of an enclosing `if`, `menu` or `choice` (None: no condition).
    let mut context: Vec<(&'static str, Vec<String>)> = Vec::new();
    let mut block = Block::None;
    let mut help_indent: Option<usize> = None;
    let raw_lines: Vec<&str> = text.lines().collect();
    let mut index = 0;
    while index < raw_lines.len() {
        let line_number = index + 1;
        let mut line = raw_lines[index].to_string();
        index += 1;
        while line.ends_with('\\') && index < raw_lines.len() {
            line.pop();
            line.push(' ');
            line.push_str(raw_lines[index].trim());
            index += 1;
        }
        let indent = indentation(&line);
        let trimmed = line.trim();
        if let Some(help) = help_indent {
            if trimmed.is_empty() || indent > help {
                continue;
            }
            help_indent = None;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (keyword, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((keyword, rest)) => (keyword, rest.trim()),
            None => (trimmed, ""),
        };
        let starts_block = matches!(
            keyword,
            "config"
                | "menuconfig"
                | "choice"
                | "endchoice"
                | "menu"
                | "endmenu"
                | "if"
                | "endif"
                | "comment"
                | "source"
                | "rsource"
                | "osource"
                | "orsource"
                | "mainmenu"
        );
        if starts_block {
            if let Block::Config(definition) = std::mem::replace(&mut block, Block::None) {
                definitions.push(definition);
            }
        }
        match keyword {
            "config" | "menuconfig" => {
                let inherited: Vec<String> = context
                    .iter()
                    .flat_map(|(_, conditions)| conditions.iter().cloned())
                    .collect();
                block = Block::Config(SymbolDefinition {
                    symbol: rest.to_string(),
                    file: file.to_string(),
                    line: line_number,
                    symbol_type: None,
                    has_prompt: false,
                    depends_on: inherited,
                    selects: Vec::new(),
                });
            }
            "if" => context.push(("if", vec![strip_comment(rest).to_string()])),
            "menu" => {
                context.push(("menu", Vec::new()));
                block = Block::Menu(context.len() - 1);
            }
            "choice" => {
                context.push(("choice", Vec::new()));
                block = Block::Menu(context.len() - 1);
            }
            "endif" | "endmenu" | "endchoice" => {
                context.pop();
            }
            "comment" | "source" | "rsource" | "osource" | "orsource" | "mainmenu" => {
                block = Block::Other
            }
            "help" | "---help---" => help_indent = Some(indent),
            "depends" => {
                let expression =
                    strip_comment(rest.strip_prefix("on").unwrap_or(rest).trim()).to_string();
                match &mut block {
                    Block::Config(definition) => definition.depends_on.push(expression),
                    Block::Menu(position) => {
                        if let Some((_, conditions)) = context.get_mut(*position) {
                            conditions.push(expression);
                        }
                    }
                    Block::None | Block::Other => {}
                }
            }
            "select" => {
                if let Block::Config(definition) = &mut block {
                    if let Some(target) = rest.split_whitespace().next() {
                        definition.selects.push(target.to_string());
                    }
                }
            }
            "bool" | "tristate" | "string" | "int" | "hex" | "def_bool" | "def_tristate"
            | "prompt" => {
                if let Block::Config(definition) = &mut block {
                    let symbol_type = match keyword {
                        "bool" | "def_bool" => Some(SymbolType::Bool),
                        "tristate" | "def_tristate" => Some(SymbolType::Tristate),
                        "string" => Some(SymbolType::String),
                        "int" => Some(SymbolType::Int),
                        "hex" => Some(SymbolType::Hex),
                        _ => definition.symbol_type,
                    };
                    definition.symbol_type = symbol_type;
                    if keyword == "prompt"
                        || (!keyword.starts_with("def_") && rest.starts_with('"'))
                    {
                        definition.has_prompt = true;
                    }
                }
            }
            _ => {}
        }
    }
    if let Block::Config(definition) = block {
        definitions.push(definition);
    }
    definitions
}

fn indentation(line: &str) -> usize {
    let mut width = 0;
    for character in line.chars() {
        match character {
            ' ' => width += 1,
            '\t' => width = (width / 8 + 1) * 8,
            _ => break,
        }
    }
    width
}

fn strip_comment(text: &str) -> &str {
    match text.find(" #") {
        Some(position) if !text[..position].contains('"') => text[..position].trim(),
        _ => text.trim(),
    }
}

/// Every symbol definition of a source tree, and the reverse `select` relation.
#[derive(Debug, Default)]
pub struct KconfigIndex {
    definitions: BTreeMap<String, Vec<SymbolDefinition>>,
    selected_by: BTreeMap<String, BTreeSet<String>>,
}

impl KconfigIndex {
    /// Builds the index from (relative path, text) pairs.
    pub fn from_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut index = KconfigIndex::default();
        for (file, text) in files {
            for definition in parse_kconfig(file, text) {
                for target in &definition.selects {
                    index
                        .selected_by
                        .entry(target.clone())
                        .or_default()
                        .insert(definition.symbol.clone());
                }
                index
                    .definitions
                    .entry(definition.symbol.clone())
                    .or_default()
                    .push(definition);
            }
        }
        index
    }

    /// Reads every `Kconfig*` file under `source_dir` (about 1,700 files; well under a second).
    pub fn scan(source_dir: &Path) -> std::io::Result<Self> {
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(source_dir).sort_by_file_name() {
            let entry = entry.map_err(std::io::Error::other)?;
            let name = entry.file_name().to_string_lossy();
            if !entry.file_type().is_file() || !name.starts_with("Kconfig") {
                continue;
            }
            let relative = entry
                .path()
                .strip_prefix(source_dir)
                .unwrap_or(entry.path())
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(entry.path())?;
            files.push((relative, text));
        }
        Ok(Self::from_files(
            files
                .iter()
                .map(|(path, text)| (path.as_str(), text.as_str())),
        ))
    }

    pub fn definitions(&self, symbol: &str) -> &[SymbolDefinition] {
        self.definitions.get(symbol).map_or(&[], Vec::as_slice)
    }

    pub fn selected_by(&self, symbol: &str) -> impl Iterator<Item = &str> {
        self.selected_by
            .get(symbol)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

/// A Kconfig tristate: n < m < y.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tristate {
    No,
    Module,
    Yes,
}

/// Evaluates a `depends on` expression against symbol values (`y`, `m`, strings; an absent
/// symbol is `n`). Returns `None` for what this small evaluator does not understand (macros
/// like `$(cc-option,…)`), so the caller says nothing rather than something wrong.
pub fn evaluate(expression: &str, value_of: &dyn Fn(&str) -> Option<String>) -> Option<Tristate> {
    if expression.contains("$(") {
        return None;
    }
    let tokens = tokenize(expression)?;
    let mut parser = Parser {
        tokens: &tokens,
        position: 0,
        value_of,
    };
    let result = parser.or()?;
    (parser.position == tokens.len()).then_some(result)
}

/// The symbols an expression mentions, in order, without duplicates or constants.
pub fn expression_symbols(expression: &str) -> Vec<String> {
    let mut symbols = Vec::new();
    for token in tokenize(expression).unwrap_or_default() {
        if let Token::Word(word) = token {
            let is_constant = matches!(word.as_str(), "y" | "m" | "n")
                || word.starts_with('"')
                || word.bytes().all(|byte| byte.is_ascii_digit());
            if !is_constant && !symbols.contains(&word) {
                symbols.push(word);
            }
        }
    }
    symbols
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Operator(&'static str),
}

fn tokenize(expression: &str) -> Option<Vec<Token>> {
    let bytes = expression.as_bytes();
    let mut tokens = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let rest = &expression[position..];
        let byte = bytes[position];
        if byte.is_ascii_whitespace() {
            position += 1;
            continue;
        }
        let operator = ["&&", "||", "!=", "<=", ">=", "=", "<", ">", "!", "(", ")"]
            .into_iter()
            .find(|operator| rest.starts_with(operator));
        if let Some(operator) = operator {
            tokens.push(Token::Operator(operator));
            position += operator.len();
        } else if byte == b'"' || byte == b'\'' {
            let end = rest[1..].find(char::from(byte))? + 2;
            tokens.push(Token::Word(format!("\"{}\"", &rest[1..end - 1])));
            position += end;
        } else if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            let end = rest
                .find(|character: char| {
                    !(character.is_ascii_alphanumeric() || character == '_' || character == '-')
                })
                .unwrap_or(rest.len());
            tokens.push(Token::Word(rest[..end].to_string()));
            position += end;
        } else {
            return None;
        }
    }
    Some(tokens)
}

struct Parser<'a> {
    tokens: &'a [Token],
    position: usize,
    value_of: &'a dyn Fn(&str) -> Option<String>,
}

impl Parser<'_> {
    fn peek_operator(&self, operator: &str) -> bool {
        matches!(self.tokens.get(self.position), Some(Token::Operator(found)) if *found == operator)
    }

    fn or(&mut self) -> Option<Tristate> {
        let mut value = self.and()?;
        while self.peek_operator("||") {
            self.position += 1;
            value = value.max(self.and()?);
        }
        Some(value)
    }

    fn and(&mut self) -> Option<Tristate> {
        let mut value = self.unary()?;
        while self.peek_operator("&&") {
            self.position += 1;
            value = value.min(self.unary()?);
        }
        Some(value)
    }

    fn unary(&mut self) -> Option<Tristate> {
        if self.peek_operator("!") {
            self.position += 1;
            return Some(match self.unary()? {
                Tristate::No => Tristate::Yes,
                Tristate::Module => Tristate::Module,
                Tristate::Yes => Tristate::No,
            });
        }
        if self.peek_operator("(") {
            self.position += 1;
            let value = self.or()?;
            if !self.peek_operator(")") {
                return None;
            }
            self.position += 1;
            return Some(value);
        }
        let left = self.word()?;
        for operator in ["=", "!=", "<", ">", "<=", ">="] {
            if self.peek_operator(operator) {
                self.position += 1;
                let right = self.word()?;
                let (left, right) = (self.text_of(&left), self.text_of(&right));
                let ordering = match (left.parse::<i64>(), right.parse::<i64>()) {
                    (Ok(left), Ok(right)) => left.cmp(&right),
                    _ => left.cmp(&right),
                };
                let holds = match operator {
                    "=" => ordering.is_eq(),
                    "!=" => !ordering.is_eq(),
                    "<" => ordering.is_lt(),
                    ">" => ordering.is_gt(),
                    "<=" => ordering.is_le(),
                    _ => ordering.is_ge(),
                };
                return Some(if holds { Tristate::Yes } else { Tristate::No });
            }
        }
        Some(match self.text_of(&left).as_str() {
            "y" => Tristate::Yes,
            "m" => Tristate::Module,
            _ => Tristate::No,
        })
    }

    fn word(&mut self) -> Option<String> {
        match self.tokens.get(self.position) {
            Some(Token::Word(word)) => {
                self.position += 1;
                Some(word.clone())
            }
            _ => None,
        }
    }

    /// A constant's text, or a symbol's value (`n` when unset).
    fn text_of(&self, word: &str) -> String {
        if matches!(word, "y" | "m" | "n") {
            return word.to_string();
        }
        if let Some(quoted) = word.strip_prefix('"') {
            return quoted.trim_end_matches('"').to_string();
        }
        match (self.value_of)(word) {
            Some(value) => value.trim_matches('"').to_string(),
            None if word.bytes().all(|byte| byte.is_ascii_digit()) => word.to_string(),
            None => "n".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_KCONFIG: &str = r#"
menuconfig NET_VENDOR_GOOGLE
	bool "Google Devices"
	default y

if NET_VENDOR_GOOGLE

config GVE
	tristate "Google Virtual NIC (gVNIC) support"
	depends on (PCI_MSI && (X86 || CPU_LITTLE_ENDIAN))
	select PAGE_POOL
	help
	  This driver supports Google Virtual NIC (gVNIC)"
	  depends on nothing: this line is help text.

endif #NET_VENDOR_GOOGLE

config PAGE_POOL
	bool
"#;

    #[test]
    fn parses_dependencies_including_enclosing_if() {
        let definitions = parse_kconfig("drivers/net/ethernet/google/Kconfig", NET_KCONFIG);
        let gve = definitions
            .iter()
            .find(|definition| definition.symbol == "GVE")
            .unwrap();
        assert_eq!(
            gve.depends_on,
            [
                "NET_VENDOR_GOOGLE",
                "(PCI_MSI && (X86 || CPU_LITTLE_ENDIAN))"
            ]
        );
        assert_eq!(gve.symbol_type, Some(SymbolType::Tristate));
        assert!(gve.has_prompt);
        assert_eq!(gve.selects, ["PAGE_POOL"]);
        let page_pool = definitions
            .iter()
            .find(|definition| definition.symbol == "PAGE_POOL")
            .unwrap();
        assert!(!page_pool.has_prompt);
        assert_eq!(page_pool.depends_on, Vec::<String>::new());
    }

    #[test]
    fn menu_dependencies_apply_to_the_configs_inside() {
        let text = "menu \"Network\"\n\tdepends on NET\n\nconfig A\n\tbool \"a\"\n\nendmenu\n\nconfig B\n\tbool \"b\"\n";
        let definitions = parse_kconfig("net/Kconfig", text);
        assert_eq!(definitions[0].depends_on, ["NET"]);
        assert!(definitions[1].depends_on.is_empty());
    }

    fn check(expression: &str, values: &[(&str, &str)], expected: Option<Tristate>) {
        let lookup = |symbol: &str| {
            values
                .iter()
                .find(|(name, _)| *name == symbol)
                .map(|(_, value)| value.to_string())
        };
        assert_eq!(evaluate(expression, &lookup), expected, "{expression}");
    }

    #[test]
    fn evaluates_tristate_expressions() {
        check(
            "A && (B || C)",
            &[("A", "y"), ("C", "m")],
            Some(Tristate::Module),
        );
        check("!X86_32", &[], Some(Tristate::Yes));
        check("X86 || CPU_LITTLE_ENDIAN", &[], Some(Tristate::No));
        check("NR_CPUS > 1", &[("NR_CPUS", "64")], Some(Tristate::Yes));
        check(
            "ARCH = \"x86\"",
            &[("ARCH", "\"x86\"")],
            Some(Tristate::Yes),
        );
        check("m", &[], Some(Tristate::Module));
        check("$(cc-option,-mfoo)", &[], None);
        assert_eq!(
            expression_symbols("PCI_MSI && (X86 || CPU_LITTLE_ENDIAN) && m"),
            ["PCI_MSI", "X86", "CPU_LITTLE_ENDIAN"]
        );
    }
}
