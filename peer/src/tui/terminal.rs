//! Owning the terminal: raw mode, the alternate screen and bracketed paste while the client
//! runs, and the terminal as it was on every way out. [`Screen`] restores it when dropped (a
//! return, an error, `/quit`, a signal handled by the loop), and a panic hook restores it
//! before the panic message is printed. Keys come from a thread that reads the terminal and
//! stops when the screen is dropped.

use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor::Show,
        event::{self, DisableBracketedPaste, EnableBracketedPaste, Event},
        execute,
        style::Print,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    Terminal,
};
use std::{
    io::{self, Stdout},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Once,
    },
    time::Duration,
};
use tokio::sync::mpsc;

/// Saves the window title on the terminal's stack (xterm's window manipulation, which most
/// terminals follow), for the client to put the unread count in it.
const SAVE_TITLE: &str = "\x1b[22;0t";
/// Puts the saved title back.
const RESTORE_TITLE: &str = "\x1b[23;0t";

/// True while the terminal is in the client's hands.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// The terminal, full-screen, until dropped.
pub(crate) struct Screen {
    /// Draw on this.
    pub(crate) terminal: Terminal<CrosstermBackend<Stdout>>,
    stop: Arc<AtomicBool>,
}

impl Screen {
    /// Takes the terminal; terminal events arrive on the returned channel.
    pub(crate) fn enter() -> io::Result<(Self, mpsc::UnboundedReceiver<Event>)> {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        terminal::enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let entered = execute!(
            io::stdout(),
            EnterAlternateScreen,
            EnableBracketedPaste,
            Print(SAVE_TITLE)
        );
        let terminal = entered.and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        let terminal = match terminal {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e);
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let reading = stop.clone();
        std::thread::Builder::new()
            .name("terminal-events".into())
            .spawn(move || read_events(tx, reading))?;
        Ok((Self { terminal, stop }, rx))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        restore();
    }
}

/// Gives the terminal back as it was; does nothing if it is not ours.
pub(crate) fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(
            io::stdout(),
            DisableBracketedPaste,
            LeaveAlternateScreen,
            Show,
            Print(RESTORE_TITLE)
        );
        let _ = terminal::disable_raw_mode();
    }
}

fn read_events(tx: mpsc::UnboundedSender<Event>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => match event::read() {
                Ok(ev) => {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            Ok(false) => {}
            Err(_) => return,
        }
    }
}
