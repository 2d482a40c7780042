//! Drawing frames on a terminal (stderr) in place, below whatever was
//! printed before, with lines printed above them as the run goes.
//!
//! The frame is redrawn by moving the cursor back to its first line and
//! erasing its lines; it has as many lines as it needs (never more than the
//! screen). Text printed "above" clears the frame, is written, and the
//! frame is drawn again under it, so it scrolls up like normal output.

use std::io::{self, Write};

use crossterm::cursor::{MoveToColumn, MoveToNextLine, MoveToPreviousLine};
use crossterm::style::{Attribute, Color, Print, ResetColor, SetAttribute, SetForegroundColor};
use crossterm::terminal::{BeginSynchronizedUpdate, Clear, ClearType, EndSynchronizedUpdate};
use crossterm::{QueueableCommand, queue};

use super::tty::{Line, Screen, Style};

/// A terminal on stderr.
pub struct Terminal {
    /// What to write next: each update goes out in one write, so that the
    /// terminal never shows half of it.
    out: Vec<u8>,
    color: bool,
    /// The frame on the screen.
    shown: Vec<Line>,
}

impl Terminal {
    /// Draws on stderr, in colour unless `color` is false.
    pub fn stderr(color: bool) -> Self {
        Self {
            out: Vec::new(),
            color,
            shown: Vec::new(),
        }
    }

    /// The area a frame may use: the screen's width less one column (so
    /// that no line ever wraps) and its height less one line.
    pub fn screen() -> Screen {
        let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
        Screen {
            width: (cols as usize).saturating_sub(1).max(1),
            height: (rows as usize).saturating_sub(1).max(1),
        }
    }

    /// Replaces the frame on the screen with `frame`.
    pub fn draw(&mut self, frame: Vec<Line>) -> io::Result<()> {
        queue!(self.out, BeginSynchronizedUpdate)?;
        self.erase()?;
        self.write_frame(&frame)?;
        self.shown = frame;
        queue!(self.out, EndSynchronizedUpdate)?;
        self.flush()
    }

    /// Prints `lines` above the frame, where they stay.
    pub fn above(&mut self, lines: &[Line]) -> io::Result<()> {
        queue!(self.out, BeginSynchronizedUpdate)?;
        self.erase()?;
        for line in lines {
            self.write_line(line)?;
        }
        let frame = std::mem::take(&mut self.shown);
        self.write_frame(&frame)?;
        self.shown = frame;
        queue!(self.out, EndSynchronizedUpdate)?;
        self.flush()
    }

    /// Removes the frame, leaving the cursor where it began.
    pub fn clear(&mut self) -> io::Result<()> {
        self.erase()?;
        self.shown.clear();
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut err = io::stderr().lock();
        let written = err.write_all(&self.out).and_then(|_| err.flush());
        self.out.clear();
        written
    }

    /// Erases the frame line by line, leaving the cursor at its start.
    /// (Not "clear to the end of the screen": from the top-left corner,
    /// some terminals, tmux among them, take that for clearing the screen
    /// and push its content into the scrollback.)
    fn erase(&mut self) -> io::Result<()> {
        self.out.queue(MoveToColumn(0))?;
        let lines = self.shown.len() as u16;
        if lines == 0 {
            return Ok(());
        }
        self.out.queue(MoveToPreviousLine(lines))?;
        for i in 0..lines {
            self.out.queue(Clear(ClearType::CurrentLine))?;
            if i + 1 < lines {
                self.out.queue(MoveToNextLine(1))?;
            }
        }
        if lines > 1 {
            self.out.queue(MoveToPreviousLine(lines - 1))?;
        }
        Ok(())
    }

    fn write_frame(&mut self, frame: &[Line]) -> io::Result<()> {
        for line in frame {
            self.write_line(line)?;
        }
        Ok(())
    }

    fn write_line(&mut self, line: &Line) -> io::Result<()> {
        for span in &line.0 {
            if self.color && span.style != Style::Plain {
                match span.style {
                    Style::Dim => queue!(self.out, SetAttribute(Attribute::Dim))?,
                    Style::Bold => queue!(self.out, SetAttribute(Attribute::Bold))?,
                    Style::Green => queue!(self.out, SetForegroundColor(Color::Green))?,
                    Style::Cyan => queue!(self.out, SetForegroundColor(Color::Cyan))?,
                    Style::Red => queue!(self.out, SetForegroundColor(Color::Red))?,
                    Style::Yellow => queue!(self.out, SetForegroundColor(Color::Yellow))?,
                    Style::Plain => {}
                }
                queue!(self.out, Print(&span.text), SetAttribute(Attribute::Reset), ResetColor)?;
            } else {
                queue!(self.out, Print(&span.text))?;
            }
        }
        queue!(self.out, Print("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::tty::Span;

    #[test]
    fn without_colour_lines_carry_no_escape_sequences() {
        let line = Line(vec![
            Span {
                text: "✔".into(),
                style: Style::Green,
            },
            Span {
                text: " exec make".into(),
                style: Style::Plain,
            },
        ]);
        let mut plain = Terminal::stderr(false);
        plain.write_line(&line).unwrap();
        assert_eq!(plain.out, "✔ exec make\n".as_bytes());
        let mut coloured = Terminal::stderr(true);
        coloured.write_line(&line).unwrap();
        let text = String::from_utf8(coloured.out).unwrap();
        assert!(
            text.starts_with("\u{1b}[") && text.contains("✔") && text.ends_with(" exec make\n"),
            "{text:?}"
        );
    }
}
