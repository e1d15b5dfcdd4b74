//! The STAR syntax: tokens, blocks, pairs and tables (see the parent module for what is accepted).

use super::*;

/// A token of a line: byte range of its value in the whole text, and whether it was quoted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Token {
    start: usize,
    end: usize,
    quoted: bool,
}

pub(super) enum State {
    /// Before the first `data_`.
    Outside,
    /// Inside a block, outside any table.
    Block,
    /// After `loop_`, reading labels.
    Header,
    /// Reading table rows.
    Body,
}

pub(super) struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
    blocks: Vec<StarBlock>,
    state: State,
    line_no: usize,
    labels: Vec<String>,
    spans: Vec<(u32, u32)>,
    body_start: usize,
    body_end: usize,
    tokens: Vec<Token>,
}

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str, path: &'a Path) -> Self {
        Self {
            text,
            path,
            blocks: Vec::new(),
            state: State::Outside,
            line_no: 0,
            labels: Vec::new(),
            spans: Vec::new(),
            body_start: 0,
            body_end: 0,
            tokens: Vec::new(),
        }
    }

    pub(super) fn run(mut self) -> Result<StarFile> {
        let text = self.text;
        let mut pos = 0;
        while pos < text.len() {
            let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
            self.line_no += 1;
            self.line(pos, end)?;
            pos = end + 1;
        }
        self.finish_table()?;
        Ok(StarFile {
            blocks: self.blocks,
        })
    }

    fn line(&mut self, start: usize, end: usize) -> Result<()> {
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        let result = tokenize(self.text.as_bytes(), start, end, &mut tokens)
            .map_err(|problem| self.error(problem))
            .and_then(|()| self.handle(&tokens));
        self.tokens = tokens;
        result
    }

    fn handle(&mut self, tokens: &[Token]) -> Result<()> {
        let Some(&first) = tokens.first() else {
            return Ok(()); // Blank or comment line.
        };
        let word = &self.text[first.start..first.end];
        let keyword = if first.quoted {
            None
        } else if starts_with_ignore_case(word, "data_") {
            Some(Keyword::Data)
        } else if word.eq_ignore_ascii_case("loop_") {
            Some(Keyword::Loop)
        } else if word.starts_with('_') {
            Some(Keyword::Label)
        } else if ["save_", "global_", "stop_"]
            .iter()
            .any(|k| starts_with_ignore_case(word, k))
        {
            return Err(self.error(format!("unsupported STAR construct `{word}`")));
        } else {
            None
        };

        // A table body ends at the next keyword.
        if matches!(self.state, State::Body) && keyword.is_some() {
            self.finish_table()?;
            self.state = State::Block;
        }

        match (&self.state, keyword) {
            (_, Some(Keyword::Data)) => {
                if matches!(self.state, State::Header) {
                    self.finish_table()?;
                }
                self.expect_alone(tokens, "block name")?;
                self.blocks.push(StarBlock::new(&word[5..]));
                self.state = State::Block;
            }
            (State::Outside, _) => {
                return Err(self.error(format!("expected `data_` before `{word}`")));
            }
            (State::Block, Some(Keyword::Loop)) => {
                self.expect_alone(tokens, "loop_")?;
                if self.current_block().table.is_some() {
                    return Err(self.error(
                        "a second `loop_` in one block (one table per block is supported)",
                    ));
                }
                self.state = State::Header;
            }
            (State::Block, Some(Keyword::Label)) => {
                if self.current_block().pairs.iter().any(|(l, _)| l == word) {
                    return Err(self.error(format!("`{word}` appears twice in one block")));
                }
                if tokens.len() != 2 {
                    return Err(self.error(format!(
                        "`{word}` outside a table needs exactly one value, found {}",
                        tokens.len() - 1
                    )));
                }
                let value = &self.text[tokens[1].start..tokens[1].end];
                let pair = (word.to_owned(), value.to_owned());
                self.current_block().pairs.push(pair);
            }
            (State::Block, _) => {
                return Err(self.error(format!(
                    "unexpected `{word}`: expected `loop_`, `_label value` or `data_`"
                )));
            }
            (State::Header, Some(Keyword::Label)) => {
                self.expect_alone(tokens, "label")?;
                // A repeated column would leave which copy counts to chance.
                if let Some(k) = self.labels.iter().position(|l| l == word) {
                    return Err(self.error(format!(
                        "column `{word}` appears twice in one table (columns {} and {})",
                        k + 1,
                        self.labels.len() + 1
                    )));
                }
                self.labels.push(word.to_owned());
            }
            (State::Header, Some(Keyword::Loop)) => {
                return Err(self.error("`loop_` inside a table header"));
            }
            (State::Header | State::Body, _) => {
                if matches!(self.state, State::Header) {
                    if self.labels.is_empty() {
                        return Err(self.error(format!("`loop_` without labels before `{word}`")));
                    }
                    self.state = State::Body;
                    self.body_start = first.start;
                    self.spans.clear();
                }
                self.row(tokens)?;
            }
        }
        Ok(())
    }

    fn row(&mut self, tokens: &[Token]) -> Result<()> {
        if tokens.len() != self.labels.len() {
            let row = self.spans.len() / self.labels.len() + 1;
            return Err(self.error(format!(
                "table row {row} has {} values, expected {} (one per label)",
                tokens.len(),
                self.labels.len()
            )));
        }
        for t in tokens {
            let start = t.start - self.body_start;
            let (Ok(s), Ok(l)) = (u32::try_from(start), u32::try_from(t.end - t.start)) else {
                return Err(self.error("table text over 4 GiB"));
            };
            self.spans.push((s, l));
        }
        // The last token ends at or after any closing quote, so the body text covers them all.
        self.body_end = tokens.last().map_or(self.body_end, |t| t.end);
        Ok(())
    }

    /// Closes an open table (header or body) into the current block.
    fn finish_table(&mut self) -> Result<()> {
        match self.state {
            State::Header | State::Body => {}
            State::Outside | State::Block => return Ok(()),
        }
        if self.labels.is_empty() {
            return Err(self.error("`loop_` without labels"));
        }
        let labels = std::mem::take(&mut self.labels);
        let mut table = StarTable::new(labels);
        if matches!(self.state, State::Body) {
            table.text = self.text[self.body_start..self.body_end].to_owned();
            table.spans = std::mem::take(&mut self.spans);
        }
        self.current_block().table = Some(table);
        self.state = State::Block;
        Ok(())
    }

    fn current_block(&mut self) -> &mut StarBlock {
        // Every state but `Outside` has pushed a block.
        if self.blocks.is_empty() {
            self.blocks.push(StarBlock::default());
        }
        let last = self.blocks.len() - 1;
        &mut self.blocks[last]
    }

    fn expect_alone(&self, tokens: &[Token], what: &str) -> Result<()> {
        if let Some(extra) = tokens.get(1) {
            return Err(self.error(format!(
                "unexpected `{}` after the {what}",
                &self.text[extra.start..extra.end]
            )));
        }
        Ok(())
    }

    fn error(&self, problem: impl Into<String>) -> FormatError {
        let field = match self.blocks.last() {
            Some(b) => format!("data_{}, line {}", b.name, self.line_no),
            None => format!("line {}", self.line_no),
        };
        FormatError::invalid(self.path, field, problem)
    }
}

#[derive(Clone, Copy)]
pub(super) enum Keyword {
    Data,
    Loop,
    Label,
}

/// Splits `bytes[start..end]` (one line) into tokens, stopping at a `#` comment.
pub(super) fn tokenize(
    bytes: &[u8],
    start: usize,
    end: usize,
    out: &mut Vec<Token>,
) -> std::result::Result<(), String> {
    let mut i = start;
    loop {
        while i < end && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= end || bytes[i] == b'#' {
            return Ok(());
        }
        let q = bytes[i];
        if q == b'\'' || q == b'"' {
            // A quote closes only when followed by whitespace or the end of the line.
            let mut j = i + 1;
            loop {
                if j >= end {
                    return Err(format!(
                        "unterminated {} quote",
                        if q == b'"' { "double" } else { "single" }
                    ));
                }
                if bytes[j] == q && (j + 1 >= end || bytes[j + 1].is_ascii_whitespace()) {
                    break;
                }
                j += 1;
            }
            out.push(Token {
                start: i + 1,
                end: j,
                quoted: true,
            });
            i = j + 1;
        } else {
            let s = i;
            while i < end && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            out.push(Token {
                start: s,
                end: i,
                quoted: false,
            });
        }
    }
}

pub(super) fn starts_with_ignore_case(word: &str, prefix: &str) -> bool {
    word.len() >= prefix.len()
        && word.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}
