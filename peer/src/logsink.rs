//! Where log lines go: stderr, except while the full-screen client owns the terminal, when a
//! line on stderr would scribble over the screen. Then they go wherever [`divert`] says (the
//! client writes them to a file in the home), until it is called again with `None`.

use std::{
    io::{self, Write},
    sync::Mutex,
};

type Diverted = Box<dyn Write + Send>;

static DIVERTED: Mutex<Option<Diverted>> = Mutex::new(None);

/// Sends log lines to `to` from now on, or back to stderr with `None`.
pub fn divert(to: Option<Diverted>) {
    *DIVERTED.lock().unwrap_or_else(|e| e.into_inner()) = to;
}

/// The writer the tracing subscriber uses: `tracing_subscriber::fmt().with_writer(Sink)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut diverted = DIVERTED.lock().unwrap_or_else(|e| e.into_inner());
        match diverted.as_mut() {
            Some(file) => file.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut diverted = DIVERTED.lock().unwrap_or_else(|e| e.into_inner());
        match diverted.as_mut() {
            Some(file) => file.flush(),
            None => io::stderr().flush(),
        }
    }
}
