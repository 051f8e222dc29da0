//! A short command's side of the control socket: requests out, and the running peer's answers
//! back as the same [`Update`]s this process's own node would give.

use super::protocol::{ControlRequest, ControlResponse};
use crate::{
    contacts::Standing,
    directory_client::Status,
    history::HistoryEntry,
    home::Home,
    rooms::RoomCommand,
    service::{Received, Update},
    target::Target,
};
use anyhow::{bail, Result};
use common::{framing, room::RoomName, KeyId, Name};
use std::path::PathBuf;
use tokio::{net::UnixStream, sync::mpsc, task::JoinHandle};

/// A connection to the running peer.
pub struct ControlClient {
    stream: Option<UnixStream>,
    requests: Option<mpsc::UnboundedSender<ControlRequest>>,
    /// The reader and writer, once started; aborted with the client.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ControlClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ControlClient {
    /// Connects to the running peer of `home`, if there is one.
    pub async fn connect(home: &Home) -> Option<Self> {
        let stream = UnixStream::connect(home.control_socket()).await.ok()?;
        Some(Self {
            stream: Some(stream),
            requests: None,
            tasks: Vec::new(),
        })
    }

    /// Asks the running peer who it is.
    pub async fn hello(&mut self) -> Result<(Name, KeyId)> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("control session already started")
        };
        framing::write_frame(stream, &ControlRequest::Hello).await?;
        match framing::read_frame(stream).await? {
            Some(ControlResponse::Hello { name, key }) => Ok((name, key)),
            other => bail!("the running peer answered {other:?}"),
        }
    }

    /// The last `limit` entries of the conversation with `with` in the running peer's history,
    /// oldest first; `None` when it keeps none. Call after [`ControlClient::hello`], instead of
    /// [`ControlClient::start`].
    pub async fn history(
        &mut self,
        with: &Target,
        limit: usize,
    ) -> Result<Option<Vec<HistoryEntry>>> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("control session already started")
        };
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let request = ControlRequest::History {
            with: with.clone(),
            limit,
        };
        framing::write_frame(stream, &request).await?;
        let mut entries = Vec::new();
        loop {
            match framing::read_frame(stream).await? {
                Some(ControlResponse::HistoryEntry(entry)) => entries.push(entry),
                Some(ControlResponse::HistoryEnd { available: true }) => return Ok(Some(entries)),
                Some(ControlResponse::HistoryEnd { available: false }) => return Ok(None),
                other => bail!("the running peer answered {other:?}"),
            }
        }
    }

    /// The running peer's directory and where its connection stands. Call after
    /// [`ControlClient::hello`], instead of [`ControlClient::start`].
    pub async fn directory(&mut self) -> Result<(String, Status)> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("control session already started")
        };
        framing::write_frame(stream, &ControlRequest::Directory).await?;
        match framing::read_frame(stream).await? {
            Some(ControlResponse::Directory { addr, status }) => Ok((addr, status)),
            other => bail!("the running peer answered {other:?}"),
        }
    }

    /// The peers with a conversation in the running peer's history, latest first. Call after
    /// [`ControlClient::hello`], instead of [`ControlClient::start`].
    pub async fn peers(&mut self) -> Result<Vec<Name>> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("control session already started")
        };
        framing::write_frame(stream, &ControlRequest::Peers).await?;
        match framing::read_frame(stream).await? {
            Some(ControlResponse::Peers(peers)) => Ok(peers),
            other => bail!("the running peer answered {other:?}"),
        }
    }

    /// Starts the reader and writer tasks; answers become [`Update`]s on `updates`. The tasks
    /// end with the client.
    pub fn start(&mut self, updates: mpsc::UnboundedSender<Update>) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<ControlRequest>();
        self.requests = Some(tx);
        self.tasks.push(tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                if framing::write_frame(&mut wr, &request).await.is_err() {
                    return;
                }
            }
        }));
        self.tasks.push(tokio::spawn(async move {
            loop {
                let update = match framing::read_frame::<ControlResponse, _>(&mut rd).await {
                    Ok(Some(response)) => match update_of(response) {
                        Some(update) => update,
                        None => continue,
                    },
                    Ok(None) | Err(_) => return,
                };
                if updates.send(update).is_err() {
                    return;
                }
            }
        }));
    }

    fn request(&self, request: ControlRequest) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(request);
        }
    }

    /// Sends a message through the running peer.
    pub fn send(&self, to: Name, body: String) {
        self.request(ControlRequest::Send { to, body });
    }

    /// Sends a message to a room through the running peer.
    pub fn send_room(&self, room: RoomName, body: String) {
        self.request(ControlRequest::SendRoom { room, body });
    }

    /// Has the running peer do a room command.
    pub fn room(&self, command: RoomCommand) {
        self.request(ControlRequest::Room(command));
    }

    /// Sends a file through the running peer.
    pub fn send_file(&self, to: Name, path: PathBuf) {
        let path = std::path::absolute(&path).unwrap_or(path);
        self.request(ControlRequest::SendFile {
            to,
            path: path.to_string_lossy().into_owned(),
        });
    }

    /// Looks a name up through the running peer.
    pub fn whois(&self, name: Name) {
        self.request(ControlRequest::Whois { name });
    }

    /// Trusts a key for a name through the running peer.
    pub fn trust(&self, name: Name, key: Option<KeyId>) {
        self.request(ControlRequest::Trust { name, key });
    }

    /// Accepts or blocks a name through the running peer.
    pub fn set_contact(&self, name: Name, standing: Standing) {
        self.request(ControlRequest::SetContact { name, standing });
    }

    /// Asks for copies of incoming messages.
    pub fn attach(&self) {
        self.request(ControlRequest::Attach);
    }

    /// Asks where the directory connection stands, now and at every change.
    pub fn watch_directory(&self) {
        self.request(ControlRequest::Directory);
    }
}

/// The update an answer means to a command; `None` for those only the request methods read.
fn update_of(response: ControlResponse) -> Option<Update> {
    Some(match response {
        ControlResponse::Sent(sent) => Update::Sent(sent),
        ControlResponse::Whois(found) => Update::Whois(found),
        ControlResponse::Message {
            message,
            room,
            via,
            request,
        } => Update::Message(Received::copy(message, room, via, request)),
        ControlResponse::RoomSent(sent) => Update::RoomSent(sent),
        ControlResponse::Room(notice) => Update::Room(notice),
        ControlResponse::Rooms(rooms) => Update::Rooms(rooms),
        ControlResponse::Contact(set) => Update::Contact(set),
        ControlResponse::Trusted(trusted) => Update::Trusted(trusted),
        ControlResponse::Notice(text) => Update::Notice(text),
        ControlResponse::Echo(echo) => Update::Echo(echo),
        ControlResponse::FileArriving(progress) => Update::FileArriving(progress),
        ControlResponse::File(file) => Update::File(file),
        ControlResponse::FileProgress { done, total } => Update::FileProgress { done, total },
        ControlResponse::FileSent(sent) => Update::FileSent(sent),
        ControlResponse::Directory { addr, status } => Update::Directory { addr, status },
        ControlResponse::Receipt {
            from,
            delivered,
            at_ms,
        } => Update::Receipt {
            from,
            delivered,
            at_ms,
        },
        ControlResponse::Hello { .. }
        | ControlResponse::Attached
        | ControlResponse::HistoryEntry(_)
        | ControlResponse::HistoryEnd { .. }
        | ControlResponse::Peers(_) => return None,
    })
}
