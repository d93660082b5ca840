//! How tables look: verdict words in colour (only on a terminal and never with `NO_COLOR`,
//! unless asked), and whether every row is shown (`-v`) or only what a reader needs: the
//! checks that decided the verdict, every failure, and a count of what was left out.

use std::io::IsTerminal;
use std::sync::OnceLock;

/// When to colour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set and not empty.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The process's table style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// Colour verdict words (ANSI).
    pub color: bool,
    /// Show every row.
    pub verbose: bool,
}

impl Default for Style {
    /// A library caller gets every row and no colour.
    fn default() -> Self {
        Self {
            color: false,
            verbose: true,
        }
    }
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Sets the style for this process (the command line does, once).
pub fn set(style: Style) {
    let _ = STYLE.set(style);
}

/// The style in force.
pub fn get() -> Style {
    STYLE.get().copied().unwrap_or_default()
}

/// Whether `choice` means colour for standard output here.
pub fn color_for_stdout(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

/// How a word reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// As expected.
    Good,
    /// Not as expected.
    Bad,
    /// Neither: skipped, unchecked.
    Neutral,
}

/// `word` in the colour of `tone` when the style colours, else as it is.
pub fn paint(word: &str, tone: Tone) -> String {
    paint_with(get(), word, tone)
}

/// [`paint`] with an explicit style.
pub fn paint_with(style: Style, word: &str, tone: Tone) -> String {
    if !style.color {
        return word.to_owned();
    }
    let code = match tone {
        Tone::Good => "32",
        Tone::Bad => "1;31",
        Tone::Neutral => "33",
    };
    format!("\x1b[{code}m{word}\x1b[0m")
}

/// `PASS` or `FAIL`, painted.
pub fn pass_fail(pass: bool) -> String {
    if pass {
        paint("PASS", Tone::Good)
    } else {
        paint("FAIL", Tone::Bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_when_asked() {
        let plain = Style {
            color: false,
            verbose: true,
        };
        let colour = Style {
            color: true,
            verbose: true,
        };
        assert_eq!(paint_with(plain, "FAIL", Tone::Bad), "FAIL");
        assert_eq!(
            paint_with(colour, "FAIL", Tone::Bad),
            "\x1b[1;31mFAIL\x1b[0m"
        );
        assert!(color_for_stdout(ColorChoice::Always));
        assert!(!color_for_stdout(ColorChoice::Never));
    }
}
