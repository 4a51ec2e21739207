//! The whole bus in another process: a backend child process runs the
//! control plane with a vmbfs and a storvsp device, and this process plays
//! the VMM (forwarding HvPostMessage, EOM, the SynIC pages and a SINT
//! eventfd through `RemoteBus`) and the guest (the Linux-like VMBus
//! client, an interrupt handler that scans the SIEFP event flags, and the
//! vmbfs and storvsc drivers). Every file and sector read is checked
//! against its source; the bus is saved, the backend killed, and a new
//! one restored from the bytes serves the same channels.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{HANG_GUARD, SECTOR, check_sectors, within};
use vmbdev_guest::storvsc::{ChannelOpener, DriverConfig, GuestProfile, Storvsc};
use vmbdev_guest::vmbfs::{BusFailure, VmbfsBus, VmbfsChannel, VmbfsClient};
use vmbdev_guest::vmbus::{
    ClientConfig, EventFlags, OfferedChannel, TraceEntry, TransportError, VmbusClient,
    VmbusTransport,
};
use vmbdev_protocol::vmbfs::Guid;
use vmbdev_protocol::vmbus::{VMBUS_SINT, Version};
use vmbdev_remote::wire::{HV_STATUS_INVALID_CONNECTION_ID, HV_STATUS_SUCCESS, code};
use vmbdev_remote::{RemoteBus, RemoteError};
use vmbdev_ring::doorbell::DoorbellWait;
use vmbdev_ring::{
    Doorbell, Endpoint, EventDoorbell, EventfdDoorbell, GuestMemory, PAGE_SIZE, PageAllocator,
    Side, StopSignal,
};

const MIB: usize = 1 << 20;
const MEMORY_PAGES: u64 = 8192;
const SIMP: u64 = 0;
const SIEFP: u64 = PAGE_SIZE as u64;
/// Data pages of each ring half the guest allocates.
const RING_PAGES: u64 = 32;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pseudo-random bytes from a generator, not from the code under test.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn write_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let sizes = [
        ("empty", 0),
        ("EFI/BOOT/below", 12275),
        ("EFI/BOOT/above", 12277),
        ("EFI/Microsoft/Boot/big.bin", 3 * MIB + 77),
    ];
    let mut files = BTreeMap::new();
    for (i, (path, len)) in sizes.into_iter().enumerate() {
        let data = noise(len, 0x9e37_79b9 + i as u64);
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, &data).unwrap();
        files.insert(path.to_owned(), data);
    }
    files
}

/// A bus backend child process; killed when dropped.
struct Backend {
    child: Child,
    socket: PathBuf,
}

impl Backend {
    fn spawn(dir: &Path, name: &str, tree: &Path, image: &Path) -> Self {
        let socket = dir.join(name);
        let child = Command::new(env!("CARGO_BIN_EXE_vmbdev-remote-server"))
            .arg("--socket")
            .arg(&socket)
            .arg("--bus")
            .arg(format!("vmbfs={}", tree.display()))
            .arg("--bus")
            .arg(format!("storvsp={}", image.display()))
            .arg("--sub-channels")
            .arg("3")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, socket }
    }

    fn connect(&mut self) -> RemoteBus {
        let start = Instant::now();
        loop {
            if self.socket.exists() {
                if let Ok(bus) = RemoteBus::connect_path(&self.socket) {
                    return bus;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the backend exited before listening: {status}");
            }
            assert!(start.elapsed() < HANG_GUARD, "the backend never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the VMM side records of the event routes the backend gives.
#[derive(Default)]
struct Routes {
    given: Vec<u32>,
    taken: Vec<u32>,
}

/// The VMM's part: the current backend connection and the SINT eventfd.
struct Vmm {
    /// The current backend connection (`None` before the first).
    bus: Mutex<Option<Arc<RemoteBus>>>,
    sint: EventfdDoorbell,
    routes: Arc<Mutex<Routes>>,
}

impl Vmm {
    fn bus(&self) -> Arc<RemoteBus> {
        lock(&self.bus).clone().expect("a backend is attached")
    }

    /// Wires a new backend connection as a VMM does at boot: memory, the
    /// guest's SynIC pages, the SINT's eventfd.
    fn attach(&self, bus: RemoteBus, memory: &GuestMemory) {
        let routes = self.routes.clone();
        bus.on_route(Arc::new(move |connection_id, fd| {
            let mut routes = lock(&routes);
            match fd {
                Some(_) => routes.given.push(connection_id),
                None => routes.taken.push(connection_id),
            }
        }));
        bus.set_memory(memory).unwrap();
        bus.set_synic_pages(0, Some(SIMP), Some(SIEFP)).unwrap();
        bus.route_sint(0, VMBUS_SINT, self.sint.as_fd()).unwrap();
        *lock(&self.bus) = Some(Arc::new(bus));
    }
}

/// The guest's VMBus transport: hypercalls through the VMM.
struct Transport {
    vmm: Arc<Vmm>,
    memory: GuestMemory,
    messages: Arc<EventDoorbell>,
    seen: u64,
}

impl VmbusTransport for Transport {
    fn post_message(&mut self, connection_id: u32, message: &[u8]) -> Result<(), TransportError> {
        match self.vmm.bus().post_message(connection_id, message) {
            Ok(HV_STATUS_SUCCESS) => Ok(()),
            Ok(status) => Err(TransportError(format!("HvPostMessage: status {status:#x}"))),
            Err(e) => Err(TransportError(e.to_string())),
        }
    }

    fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn simp_page(&self) -> u64 {
        SIMP
    }

    fn eom(&mut self) {
        let _ = self.vmm.bus().eom(0);
    }

    fn wait_interrupt(&mut self) -> Result<(), TransportError> {
        let start = Instant::now();
        loop {
            let armed = vmbdev_ring::wait(&*self.messages);
            let count = self.messages.signal_count();
            if count != self.seen {
                self.seen = count;
                return Ok(());
            }
            if start.elapsed() > HANG_GUARD {
                return Err(TransportError("no interrupt within the hang guard".into()));
            }
            vmbdev_ring::block_on(futures_lite::future::or(armed, async {
                async_io::Timer::after(Duration::from_millis(100)).await;
            }));
        }
    }
}

/// HvSignalEvent on a channel's connection id, through whichever backend
/// is current.
struct SignalEvent {
    vmm: Arc<Vmm>,
    connection_id: u32,
    never: EventDoorbell,
}

impl Doorbell for SignalEvent {
    fn signal(&self) {
        self.vmm.bus().signal_event(self.connection_id);
    }

    fn listen(&self) -> DoorbellWait {
        self.never.listen()
    }
}

/// The guest: memory, its view of the SynIC pages, the VMBus client and
/// the interrupt handler thread.
struct Guest {
    memory: GuestMemory,
    pages: PageAllocator,
    vmm: Arc<Vmm>,
    client: Mutex<VmbusClient<Transport>>,
    /// The doorbell of each channel the handler rings when its flag is set.
    channels: Arc<Mutex<HashMap<u32, Arc<EventDoorbell>>>>,
    rings: Mutex<HashMap<u32, (u32, Vec<u64>)>>,
    stop: Arc<AtomicBool>,
    handler: Option<JoinHandle<()>>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.vmm.sint.signal();
        if let Some(handler) = self.handler.take() {
            let _ = handler.join();
        }
    }
}

impl Guest {
    fn boot(bus: RemoteBus) -> Arc<Self> {
        let memory = GuestMemory::new(MEMORY_PAGES * PAGE_SIZE as u64).unwrap();
        let vmm = Arc::new(Vmm {
            bus: Mutex::new(None),
            sint: EventfdDoorbell::new().unwrap(),
            routes: Arc::default(),
        });
        vmm.attach(bus, &memory);
        let messages = Arc::new(EventDoorbell::new());
        let channels: Arc<Mutex<HashMap<u32, Arc<EventDoorbell>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = interrupt_handler(&memory, &vmm, &messages, &channels, &stop);
        let transport = Transport {
            vmm: vmm.clone(),
            memory: memory.clone(),
            messages,
            seen: 0,
        };
        let client = VmbusClient::new(
            transport,
            ClientConfig {
                trace: true,
                ..ClientConfig::default()
            },
        );
        Arc::new(Self {
            memory,
            pages: PageAllocator::new(2..MEMORY_PAGES, false),
            vmm,
            client: Mutex::new(client),
            channels,
            rings: Mutex::new(HashMap::new()),
            stop,
            handler: Some(handler),
        })
    }

    fn client(&self) -> MutexGuard<'_, VmbusClient<Transport>> {
        lock(&self.client)
    }

    fn connect(&self) -> (Version, Vec<OfferedChannel>) {
        let mut client = self.client();
        let version = client.connect().unwrap();
        (version, client.request_offers().unwrap())
    }

    /// Opens `relid` as Linux does: ring pages, GPADL, OPENCHANNEL.
    fn open(&self, relid: u32) -> Endpoint {
        let connection_id = self.client().offer(relid).unwrap().connection_id;
        let interrupt = Arc::new(EventDoorbell::new());
        lock(&self.channels).insert(relid, interrupt.clone());
        let pages = self.pages.alloc(2 + 2 * RING_PAGES).unwrap();
        for &page in &pages {
            self.memory
                .fill(page * PAGE_SIZE as u64, PAGE_SIZE as u64, 0)
                .unwrap();
        }
        let downstream = 1 + RING_PAGES as u32;
        let gpadl = {
            let mut client = self.client();
            let gpadl = client.create_gpadl(relid, &pages).unwrap();
            client.open_channel(relid, gpadl, downstream, 0).unwrap();
            gpadl
        };
        lock(&self.rings).insert(relid, (gpadl, pages.clone()));
        let signal = Arc::new(SignalEvent {
            vmm: self.vmm.clone(),
            connection_id,
            never: EventDoorbell::new(),
        });
        Endpoint::open(
            Side::Guest,
            &self.memory,
            &pages,
            downstream,
            interrupt,
            signal,
        )
        .unwrap()
    }

    fn close(&self, relid: u32) {
        let (gpadl, pages) = lock(&self.rings).remove(&relid).unwrap();
        let mut client = self.client();
        client.close_channel(relid).unwrap();
        client.teardown_gpadl(gpadl).unwrap();
        drop(client);
        lock(&self.channels).remove(&relid);
        self.pages.free(&pages);
    }

    fn trace(&self) -> Vec<TraceEntry> {
        self.client().trace().to_vec()
    }
}

/// The guest's VMBus interrupt handler: on each SINT it tests and clears
/// the event flag of every open channel, rings that channel's doorbell,
/// and wakes the message client.
fn interrupt_handler(
    memory: &GuestMemory,
    vmm: &Arc<Vmm>,
    messages: &Arc<EventDoorbell>,
    channels: &Arc<Mutex<HashMap<u32, Arc<EventDoorbell>>>>,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<()> {
    let flags = EventFlags::new(memory.clone(), SIEFP, VMBUS_SINT);
    let (vmm, messages, channels, stop) = (
        vmm.clone(),
        messages.clone(),
        channels.clone(),
        stop.clone(),
    );
    std::thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            vmbdev_ring::block_on(vmm.sint.listen());
            let bells = lock(&channels);
            let limit = bells.keys().max().map_or(0, |&relid| relid + 1);
            flags
                .take_all(limit, |relid| {
                    if let Some(bell) = bells.get(&relid) {
                        bell.signal();
                    }
                })
                .unwrap();
            drop(bells);
            messages.signal();
        }
    })
}

/// storvsc's sub-channels, opened through the guest's VMBus client.
struct SubChannels {
    guest: Arc<Guest>,
    instance: Guid,
}

impl ChannelOpener for SubChannels {
    fn open_sub_channel(&self, index: u16) -> Result<Endpoint, String> {
        let offer = self
            .guest
            .client()
            .wait_offer(self.instance, index)
            .map_err(|e| e.to_string())?;
        Ok(self.guest.open(offer.relid))
    }
}

/// The vmbfs client's bus: its channel opened through the VMBus client.
struct Vmbfs {
    guest: Arc<Guest>,
    relid: u32,
}

struct VmbfsRing {
    endpoint: Endpoint,
    guest: Arc<Guest>,
    relid: u32,
    stopped: Arc<StopSignal>,
}

impl VmbfsBus for Vmbfs {
    type Channel = VmbfsRing;

    fn open_channel(&mut self) -> Result<VmbfsRing, BusFailure> {
        Ok(VmbfsRing {
            endpoint: self.guest.open(self.relid),
            guest: self.guest.clone(),
            relid: self.relid,
            stopped: Arc::new(StopSignal::new()),
        })
    }

    fn memory(&self) -> &GuestMemory {
        &self.guest.memory
    }

    fn pages(&self) -> &PageAllocator {
        &self.guest.pages
    }
}

impl VmbfsChannel for VmbfsRing {
    fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    fn host_stopped(&self) -> Arc<StopSignal> {
        self.stopped.clone()
    }

    async fn wait_host_end(&mut self) -> Result<(), BusFailure> {
        self.stopped.wait().await;
        Ok(())
    }

    async fn suspend_host(&mut self) -> Result<(), BusFailure> {
        Err("not part of this test".into())
    }

    async fn close(self) -> Result<(), BusFailure> {
        self.guest.close(self.relid);
        self.stopped.stop();
        Ok(())
    }
}

fn storvsc(guest: &Arc<Guest>, offer: &OfferedChannel, cpus: u16) -> Storvsc {
    let primary = guest.open(offer.relid);
    let opener = SubChannels {
        guest: guest.clone(),
        instance: offer.instance_id,
    };
    within(Storvsc::connect(
        primary,
        guest.memory.clone(),
        guest.pages.clone(),
        &opener,
        &DriverConfig {
            profile: GuestProfile::Linux,
            cpus,
            buffer_offset: 0,
            ..DriverConfig::default()
        },
    ))
    .expect("hang guard")
    .unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    tree: PathBuf,
    files: BTreeMap<String, Vec<u8>>,
    image_path: PathBuf,
    image: Vec<u8>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let files = write_tree(&tree);
    let image = noise(4 * MIB, 0x2545_f491);
    let image_path = dir.path().join("disk.raw");
    std::fs::write(&image_path, &image).unwrap();
    Setup {
        dir,
        tree,
        files,
        image_path,
        image,
    }
}

fn offer_named(offers: &[OfferedChannel], vmbfs: bool) -> &OfferedChannel {
    offers
        .iter()
        .find(|o| (o.interface_id == vmbdev_protocol::vmbfs::INTERFACE_ID) == vmbfs)
        .expect("the offer")
}

#[test]
fn a_bus_in_another_process_serves_every_file_and_sector_through_its_control_plane() {
    let s = setup();
    let mut backend = Backend::spawn(s.dir.path(), "bus.sock", &s.tree, &s.image_path);
    let guest = Guest::boot(backend.connect());
    let (version, offers) = guest.connect();
    assert_eq!(version, Version::V5_3, "the newest version Linux asks");
    assert_eq!(offers.len(), 2, "one offer per device: {offers:?}");
    let relids: Vec<u32> = offers.iter().map(|o| o.relid).collect();
    assert_eq!(relids, [1, 2], "relids from 1 in the backend's order");

    // vmbfs: every file, in-band and by RDMA.
    let vmbfs = offer_named(&offers, true).relid;
    for rdma in [false, true] {
        let mut client = VmbfsClient::new(
            Vmbfs {
                guest: guest.clone(),
                relid: vmbfs,
            },
            rdma,
        );
        for (path, data) in &s.files {
            let read = within(client.read_all(path)).expect("hang guard").unwrap();
            assert!(read == *data, "{path} (rdma {rdma}) differs");
        }
        within(client.close()).expect("hang guard").unwrap();
    }

    // storvsp: the primary channel and 3 sub-channels the backend offers
    // when the device asks.
    let storvsp = offer_named(&offers, false).clone();
    let driver = storvsc(&guest, &storvsp, 4);
    assert_eq!(driver.channel_count(), 4, "primary + 3 sub-channels");
    check_sectors(&driver, &s.image, 0, (s.image.len() / SECTOR) as u64, 16);

    let routes = lock(&guest.vmm.routes);
    let open_relids = lock(&guest.rings).len();
    assert_eq!(
        routes.given.len(),
        2 + open_relids,
        "a route for each open: two vmbfs opens and the storvsp channels"
    );
    assert_eq!(
        routes.taken.len(),
        2,
        "the closed vmbfs channels' routes are taken back"
    );
    drop(routes);

    drop(driver);
    guest.client().unload().unwrap();
    let kinds: Vec<String> = guest.trace().iter().map(|t| t.to_string()).collect();
    let first = kinds.first().cloned().unwrap_or_default();
    assert!(first.contains("INITIATE_CONTACT"), "{first}");
    assert!(
        kinds.iter().any(|k| k.contains("UNLOAD_RESPONSE")),
        "{kinds:?}"
    );
}

#[test]
fn a_bus_saved_from_one_backend_process_goes_on_in_the_next() {
    let s = setup();
    let mut backend = Backend::spawn(s.dir.path(), "first.sock", &s.tree, &s.image_path);
    let guest = Guest::boot(backend.connect());
    let (_, offers) = guest.connect();
    let storvsp = offer_named(&offers, false).clone();
    let driver = storvsc(&guest, &storvsp, 2);
    let sectors = (s.image.len() / SECTOR) as u64;
    check_sectors(&driver, &s.image, 0, sectors / 2, 16);

    let saved = guest.vmm.bus().save().unwrap();
    backend.kill();
    let mut next = Backend::spawn(s.dir.path(), "second.sock", &s.tree, &s.image_path);
    let bus = next.connect();
    // A new backend is wired like the first, then given the saved bus.
    guest.vmm.attach(bus, &guest.memory);
    guest.vmm.bus().restore(&saved).unwrap();

    check_sectors(&driver, &s.image, sectors / 2, sectors - sectors / 2, 16);
    check_sectors(&driver, &s.image, 0, 64, 16);
    drop(driver);
    guest.client().unload().unwrap();
}

#[test]
fn a_bus_backend_answers_bad_vmm_requests_with_errors_and_goes_on() {
    let (vmm_end, backend_end) = vmbdev_remote::transport::socket_pair().unwrap();
    let backend = std::thread::spawn(move || {
        vmbdev_remote::serve_bus(backend_end, Vec::new(), Default::default()).unwrap()
    });
    let bus = RemoteBus::connect(vmm_end).unwrap();
    let refused = |result: Result<(), RemoteError>| match result {
        Err(RemoteError::Refused { code, text, .. }) => (code, text),
        other => panic!("expected a refusal, got {other:?}"),
    };

    let (code, text) = refused(bus.post_message(1, &[0; 16]).map(|_| ()));
    assert_eq!(code, code::NO_MEMORY, "{text}");
    let memory = GuestMemory::new(64 * PAGE_SIZE as u64).unwrap();
    bus.set_memory(&memory).unwrap();
    let (code, text) = refused(bus.set_memory(&memory));
    assert_eq!(code, code::BAD_SEQUENCE, "a second memory: {text}");

    let (code, text) = refused(bus.set_synic_pages(0, Some(100), None));
    assert_eq!(code, code::BAD_FIELD, "an unaligned SIMP: {text}");
    assert!(text.contains("0x64"), "the address is named: {text}");
    let (code, text) = refused(bus.set_synic_pages(0, Some(64 * PAGE_SIZE as u64), None));
    assert_eq!(code, code::BAD_FIELD, "a SIMP outside memory: {text}");
    let (code, text) = refused(bus.set_synic_pages(7, Some(0), None));
    assert_eq!(
        code,
        code::BAD_FIELD,
        "a vCPU the guest does not have: {text}"
    );
    let sint = EventfdDoorbell::new().unwrap();
    let (code, text) = refused(bus.route_sint(0, 16, sint.as_fd()));
    assert_eq!(code, code::BAD_FIELD, "SINT 16: {text}");

    // HvPostMessage on a connection id the bus does not listen on fails
    // as the hypercall does; one on the right id but malformed succeeds
    // (the bus drops and counts it).
    assert_eq!(
        bus.post_message(77, &[0; 16]).unwrap(),
        HV_STATUS_INVALID_CONNECTION_ID
    );
    assert_eq!(bus.post_message(4, &[0xff; 8]).unwrap(), HV_STATUS_SUCCESS);

    // Still serving.
    bus.set_synic_pages(0, Some(0), Some(PAGE_SIZE as u64))
        .unwrap();
    bus.route_sint(0, VMBUS_SINT, sint.as_fd()).unwrap();
    bus.eom(0).unwrap();
    drop(bus);
    let stats = backend.join().unwrap();
    assert_eq!(stats.refused(code::NO_MEMORY), 1);
    assert_eq!(stats.refused(code::BAD_SEQUENCE), 1);
    assert_eq!(stats.refused(code::BAD_FIELD), 4);
}

#[test]
fn a_bus_backend_refuses_malformed_messages_by_code_and_goes_on() {
    use vmbdev_remote::transport::{self, Message};
    use vmbdev_remote::wire::kind;
    use zerocopy::IntoBytes;
    let (vmm, backend_end) = transport::socket_pair().unwrap();
    let backend = std::thread::spawn(move || {
        vmbdev_remote::serve_bus(backend_end, Vec::new(), Default::default()).unwrap()
    });
    let reply = |id: u32| -> Message {
        let datagram = within(async { transport::recv(vmm.as_fd()).unwrap() })
            .expect("hang guard")
            .expect("a reply");
        let message = transport::check(datagram).unwrap();
        assert_eq!(message.id, id);
        message
    };
    let expect_error = |id: u32, expected: u32| {
        let message = reply(id);
        assert_eq!(message.kind, kind::ERROR);
        let error = transport::parse_error(&message.payload);
        assert_eq!(error.code, expected, "{}", error.text);
    };
    let header = vmbdev_remote::wire::GuestMessage {
        connection_id: 4.into(),
        reserved: 0.into(),
    };
    transport::send(vmm.as_fd(), kind::GUEST_MESSAGE, 1, header.as_bytes(), &[]).unwrap();
    expect_error(1, code::BAD_SEQUENCE);
    let hello = vmbdev_remote::wire::HelloRequest {
        min_version: 1.into(),
        max_version: 1.into(),
        reserved: 0.into(),
    };
    transport::send(vmm.as_fd(), kind::HELLO, 2, hello.as_bytes(), &[]).unwrap();
    assert_eq!(reply(2).kind, kind::HELLO_REPLY);
    // A kind only a device server takes.
    transport::send(vmm.as_fd(), kind::OPEN, 3, &[0; 16], &[]).unwrap();
    expect_error(3, code::UNKNOWN_COMMAND);
    // A SINT route without its eventfd, and an EOM with one.
    let route = vmbdev_remote::wire::SintRoute {
        vp: 0.into(),
        sint: VMBUS_SINT,
        reserved: [0; 3],
    };
    transport::send(vmm.as_fd(), kind::SINT_ROUTE, 4, route.as_bytes(), &[]).unwrap();
    expect_error(4, code::MISSING_FDS);
    let bell = EventfdDoorbell::new().unwrap();
    transport::send(vmm.as_fd(), kind::EOM, 5, &[0; 8], &[bell.as_fd()]).unwrap();
    expect_error(5, code::UNEXPECTED_FDS);
    // A guest message cut inside its fixed part.
    transport::send(vmm.as_fd(), kind::GUEST_MESSAGE, 6, &[4, 0, 0], &[]).unwrap();
    expect_error(6, code::TRUNCATED);
    // Enabled bits that mean nothing.
    let pages = vmbdev_remote::wire::SynicPages {
        vp: 0.into(),
        enabled: 4.into(),
        simp: 0.into(),
        siefp: 0.into(),
    };
    transport::send(vmm.as_fd(), kind::SYNIC_PAGES, 7, pages.as_bytes(), &[]).unwrap();
    expect_error(7, code::BAD_FIELD);
    // Still answering.
    transport::send(vmm.as_fd(), kind::EOM, 8, &[0; 8], &[]).unwrap();
    expect_error(8, code::NO_MEMORY);
    transport::shut_down(vmm.as_fd());
    let stats = backend.join().unwrap();
    assert_eq!(stats.total_refused(), 7);
}
