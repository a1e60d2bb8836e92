//! kiln-console: the console byte stream as a terminal would show it, split into lines,
//! once, before any marker or test looks at it. No dependencies, no I/O: bytes in, lines
//! out; `kiln-smoke` and the boot tests of `kiln-init` and `kiln-kernel` use it.
//!
//! A serial console carries more than text: firmware redraws progress with backspaces
//! (iPXE: `initramfs-x86_64... 68%^H^H^H^H    ^H^H^H^H ok`), the kernel ends lines with
//! `\r\n`, and a firmware or boot loader resets the terminal before it hands over
//! (`ESC c ESC [?7l ESC [2J`). Such a reset can land in the middle of a line that was still
//! being printed: iPXE's `... ok` has been seen to lose its `k` to the kernel's reset. So
//! markers never match raw bytes; [`ConsoleLines`] renders them first:
//!
//! * escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ST`, two- and three-byte
//!   `ESC x` / `ESC ( x`) are dropped;
//! * a terminal reset (`ESC c`) or an erase of the display (`ESC [ … J`) ends the line
//!   being printed, as the screen it was on is gone;
//! * a backspace erases the character before it, `\r` and other control characters
//!   (except tab) are dropped.
//!
//! The raw bytes still go to the console log unchanged; only what markers see is rendered.

/// Longest escape sequence kept as one: anything longer is not a sequence a terminal would
/// take, so what follows is text again (a stray `ESC [` must not swallow the console).
const MAX_SEQUENCE_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Text,
    /// After `ESC`.
    Escape,
    /// After `ESC (` and its kin: one more byte names a character set.
    EscapeIntermediate,
    /// Inside `ESC [`.
    ControlSequence,
    /// Inside `ESC ]`, until BEL or `ESC \`.
    OperatingSystemCommand,
    /// `ESC` inside an OSC: `\` ends it.
    OperatingSystemCommandEscape,
}

/// Turns console bytes into rendered lines; feed it chunks as they arrive (a sequence or a
/// UTF-8 character may be split between chunks).
#[derive(Debug, Default)]
pub struct ConsoleLines {
    state: State,
    line: Vec<u8>,
    sequence: Vec<u8>,
}

impl ConsoleLines {
    pub fn new() -> ConsoleLines {
        ConsoleLines::default()
    }

    /// Renders `bytes`; returns the lines they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            self.push_byte(byte, &mut lines);
        }
        lines
    }

    /// The line being printed (not ended yet), rendered.
    pub fn pending(&self) -> String {
        String::from_utf8_lossy(&self.line).into_owned()
    }

    /// Ends the stream: the line being printed, if any.
    pub fn finish(&mut self) -> Option<String> {
        self.state = State::Text;
        self.sequence.clear();
        if self.line.is_empty() {
            None
        } else {
            Some(self.take_line())
        }
    }

    fn take_line(&mut self) -> String {
        let bytes = std::mem::take(&mut self.line);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The screen the line was on is gone: what was printed of it is a line of its own.
    fn break_line(&mut self, lines: &mut Vec<String>) {
        if !self.line.is_empty() {
            lines.push(self.take_line());
        }
    }

    fn erase_character(&mut self) {
        // One character, not one byte: drop UTF-8 continuation bytes with their lead byte.
        while let Some(byte) = self.line.pop() {
            if byte & 0b1100_0000 != 0b1000_0000 {
                break;
            }
        }
    }

    fn push_byte(&mut self, byte: u8, lines: &mut Vec<String>) {
        const ESC: u8 = 0x1b;
        const BEL: u8 = 0x07;
        const BACKSPACE: u8 = 0x08;
        match self.state {
            State::Text => match byte {
                ESC => {
                    self.state = State::Escape;
                    self.sequence.clear();
                }
                b'\n' => lines.push(self.take_line()),
                BACKSPACE => self.erase_character(),
                b'\t' => self.line.push(byte),
                0x00..=0x1f | 0x7f => {}
                _ => self.line.push(byte),
            },
            State::Escape => {
                self.state = match byte {
                    b'[' => State::ControlSequence,
                    b']' => State::OperatingSystemCommand,
                    b'(' | b')' | b'*' | b'+' | b'-' | b'.' | b'/' | b'#' | b'%' => {
                        State::EscapeIntermediate
                    }
                    b'c' => {
                        // RIS, a full reset: the screen is cleared.
                        self.break_line(lines);
                        State::Text
                    }
                    ESC => State::Escape,
                    _ => State::Text,
                };
            }
            State::EscapeIntermediate => self.state = State::Text,
            State::ControlSequence => match byte {
                0x40..=0x7e => {
                    if byte == b'J' {
                        self.break_line(lines);
                    }
                    self.state = State::Text;
                }
                0x20..=0x3f if self.sequence.len() < MAX_SEQUENCE_BYTES => self.sequence.push(byte),
                _ => {
                    // Not a control sequence after all: the byte is text again.
                    self.state = State::Text;
                    self.push_byte(byte, lines);
                }
            },
            State::OperatingSystemCommand => match byte {
                BEL => self.state = State::Text,
                ESC => self.state = State::OperatingSystemCommandEscape,
                b'\n' => {
                    self.state = State::Text;
                    lines.push(self.take_line());
                }
                _ if self.sequence.len() < MAX_SEQUENCE_BYTES => self.sequence.push(byte),
                _ => self.state = State::Text,
            },
            State::OperatingSystemCommandEscape => {
                self.state = State::Text;
                if byte != b'\\' {
                    self.push_byte(ESC, lines);
                    self.push_byte(byte, lines);
                }
            }
        }
    }
}

/// A whole captured console, rendered: for tests that read the console after QEMU exited.
pub fn render(bytes: &[u8]) -> String {
    let mut console = ConsoleLines::new();
    let mut lines = console.push(bytes);
    lines.extend(console.finish());
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut console = ConsoleLines::new();
        let mut lines = Vec::new();
        for chunk in chunks {
            lines.extend(console.push(chunk));
        }
        lines.extend(console.finish());
        lines
    }

    #[test]
    fn progress_drawn_with_backspaces_renders_as_the_terminal_shows_it() {
        let raw: &[u8] =
            b"initramfs-x86_64... 68%\x08\x08\x08\x08    \x08\x08\x08\x08 ok\r\nkiln: ready\r\n";
        assert_eq!(lines_of(&[raw]), ["initramfs-x86_64... ok", "kiln: ready"]);
    }

    /// The bytes seen on a fresh machine: iPXE's `ok` lost its `k` to the kernel's reset.
    #[test]
    fn a_terminal_reset_in_the_middle_of_a_line_ends_that_line() {
        let raw: &[u8] =
            b"initramfs-x86_64... o\x1bc\x1b[?7l\x1b[2JLinux version 6.1.192-kiln (kiln@kiln)\r\n";
        assert_eq!(
            lines_of(&[raw]),
            [
                "initramfs-x86_64... o",
                "Linux version 6.1.192-kiln (kiln@kiln)"
            ]
        );
    }

    #[test]
    fn sequences_and_characters_split_between_chunks_are_rendered_whole() {
        let raw = "ok é\x1b[1;32mgreen\x1b[0m\x1b]0;title\x07 \x1b(Bend\r\n".as_bytes();
        for split in 0..raw.len() {
            assert_eq!(
                lines_of(&[&raw[..split], &raw[split..]]),
                ["ok égreen end"],
                "split at byte {split}"
            );
        }
        // A backspace erases a whole character, not one byte of it.
        assert_eq!(lines_of(&["aé\x08b\n".as_bytes()]), ["ab"]);
    }

    #[test]
    fn a_stray_escape_does_not_swallow_the_text_after_it() {
        assert_eq!(lines_of(&[b"a\x1b[\x01kiln: ready\n"]), ["akiln: ready"]);
        // Past MAX_SEQUENCE_BYTES the parameters are text again.
        let long = format!("\x1b[{}kiln: ready\n", "1;".repeat(40));
        assert_eq!(
            lines_of(&[long.as_bytes()]),
            [format!("{}kiln: ready", "1;".repeat(8))]
        );
    }

    #[test]
    fn render_gives_the_whole_console_with_every_line_ended() {
        assert_eq!(
            render(b"Linux version 6.1\r\n\x1b[2Jkiln: ready"),
            "Linux version 6.1\nkiln: ready\n"
        );
    }
}
