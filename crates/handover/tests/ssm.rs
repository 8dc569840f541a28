//! The Save State Map end to end, without privileges: write a map as `overboot update` would,
//! publish it, read it back as the new kernel would, and check that damage is named precisely.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use overboot_handover::cpio::read_archive;
use overboot_handover::header::HeaderError;
use overboot_handover::{
    locate_from_cmdline, ClockReadings, DigestAlgorithm, DirectoryStore, HandoverError,
    InitrdStore, KernelInfo, Manifest, PreservedTree, RollbackRecipe, SaveStateMap, Store,
    StoreError, TargetKernel,
};

/// Deterministic, incompressible-looking bytes of any length.
fn bytes(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn tree(name: &str, pid: i32, images: &str) -> PreservedTree {
    PreservedTree {
        name: name.into(),
        root_pid: pid,
        pids: vec![pid, pid + 1],
        threads: Vec::new(),
        images: images.into(),
        cmdline: format!("{name} --serve"),
        clocks_realtime_ns: 0,
        unit: None,
        journal_streams: Vec::new(),
    }
}

/// A finished map in `<tmp>/ssm`: two trees whose images the "engine" wrote in place, one
/// carried tmpfs file and a log.
fn build_map(tmp: &Path) -> SaveStateMap {
    let mut writer = SaveStateMap::create(tmp.join("ssm")).unwrap();
    for (images, seed) in [("trees/redis", 1), ("trees/pid-4242", 2)] {
        let dir = writer.create_dir(images).unwrap();
        fs::write(dir.join("pages-1.img"), bytes(seed, 10_003)).unwrap();
        fs::write(dir.join("core-4242.img"), bytes(seed + 10, 517)).unwrap();
        fs::write(dir.join("empty.img"), b"").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/fdinfo-2.img"), bytes(seed + 20, 3)).unwrap();
        assert_eq!(writer.adopt_tree(images).unwrap(), 4);
    }
    let run = tmp.join("sys/run");
    fs::create_dir_all(&run).unwrap();
    fs::write(run.join("app.pid"), b"4242\n").unwrap();
    let carried = writer
        .carry_file(&run.join("app.pid"), "files/run/app.pid")
        .unwrap();
    writer.add_bytes("logs/dump.log", b"dump ok\n").unwrap();

    let manifest = Manifest {
        created_unix_ms: 1_790_000_000_000,
        from: KernelInfo {
            release: "6.1.0-47-cloud-amd64".into(),
            boot_id: "b1".into(),
        },
        to: TargetKernel {
            release: "6.1.0-56-cloud-amd64".into(),
            boot_id: None,
        },
        clocks: ClockReadings {
            realtime_ns: 10,
            monotonic_ns: 20,
            boottime_ns: 30,
        },
        trees: vec![
            tree("redis.service", 300, "trees/redis"),
            tree("pid:4242", 4242, "trees/pid-4242"),
        ],
        carried_files: vec![carried],
        rollback: RollbackRecipe {
            kernel: "/boot/vmlinuz-6.1.0-47-cloud-amd64".into(),
            initrd: None,
            cmdline: "root=/dev/vda1".into(),
        },
        phases: BTreeMap::from([("freeze".into(), 3), ("dump".into(), 120)]),
        ..Manifest::default()
    };
    writer.finish(manifest).unwrap()
}

/// Every file of the map by relative path, read from disk.
fn map_files(map: &SaveStateMap) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = map
        .manifest()
        .files
        .keys()
        .map(|rel| (rel.clone(), fs::read(map.path_of(rel)).unwrap()))
        .collect();
    for name in ["HEADER", "manifest.json"] {
        files.insert(name.into(), fs::read(map.dir().join(name)).unwrap());
    }
    files
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn written_map_opens_and_verifies_with_root_only_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    let opened = SaveStateMap::open(map.dir()).unwrap();
    assert_eq!(opened.manifest(), map.manifest());
    assert_eq!(opened.manifest().files.len(), 10);
    let report = opened.verify_files().unwrap();
    assert_eq!(report.files, 10);
    assert_eq!(report.bytes, 2 * (10_003 + 517 + 3) + 5 + 8);
    assert_eq!(opened.verify_tree("redis.service").unwrap().files, 4);
    assert_eq!(mode(map.dir()), 0o700);
    assert_eq!(mode(&map.dir().join("trees/redis/sub")), 0o700);
    assert_eq!(mode(&map.dir().join("trees/redis/pages-1.img")), 0o600);
    assert_eq!(mode(&map.dir().join("HEADER")), 0o600);
    assert_eq!(mode(&map.dir().join("files/run/app.pid")), 0o600);
    let carried = &opened.manifest().carried_files[0];
    assert_eq!(carried.path, tmp.path().join("sys/run/app.pid"));
}

#[test]
fn initrd_store_appends_an_aligned_cpio_holding_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    let base = bytes(99, 1001);
    fs::write(tmp.path().join("base.img"), &base).unwrap();
    let store = InitrdStore::new(
        Some(tmp.path().join("base.img")),
        tmp.path().join("out.img"),
    );
    let published = store.publish(&map).unwrap();
    assert_eq!(store.kind(), "initrd");
    assert_eq!(
        published.cmdline_param,
        "overboot.handover=initrd:/overboot/ssm"
    );
    assert_eq!(
        published.initrd.as_deref(),
        Some(tmp.path().join("out.img").as_path())
    );

    let out = fs::read(tmp.path().join("out.img")).unwrap();
    assert_eq!(mode(&tmp.path().join("out.img")), 0o600);
    assert_eq!(&out[..1001], &base[..]);
    assert_eq!(&out[1001..1004], &[0, 0, 0]);
    let archive = read_archive(&out[1004..]).unwrap();
    assert_eq!(archive.len as u64, published.bytes);
    assert_eq!(out.len(), 1004 + archive.len);

    let in_archive: BTreeMap<&str, &[u8]> = archive
        .entries
        .iter()
        .filter(|e| e.is_file())
        .map(|e| (e.name, e.data))
        .collect();
    let expected = map_files(&map);
    assert_eq!(in_archive.len(), expected.len());
    for (rel, content) in &expected {
        let name = format!("overboot/ssm/{rel}");
        assert_eq!(in_archive.get(name.as_str()), Some(&&content[..]), "{name}");
    }
    // Directories come before their contents, root-only.
    let mut seen = std::collections::BTreeSet::new();
    for entry in &archive.entries {
        if let Some((parent, _)) = entry.name.rsplit_once('/') {
            assert!(seen.contains(parent), "{} before its directory", entry.name);
        }
        assert_eq!(entry.perm(), if entry.is_dir() { 0o700 } else { 0o600 });
        seen.insert(entry.name);
    }

    // What the new kernel sees: the unpacked map opens and verifies.
    let root = tmp.path().join("newroot");
    for entry in &archive.entries {
        let path = root.join(entry.name);
        if entry.is_dir() {
            fs::create_dir_all(&path).unwrap();
        } else {
            fs::write(&path, entry.data).unwrap();
        }
    }
    let location = locate_from_cmdline(&format!("console=ttyS0 {}", published.cmdline_param))
        .unwrap()
        .unwrap();
    let unpacked = root.join(location.strip_prefix("/").unwrap());
    let reopened = SaveStateMap::open(&unpacked).unwrap();
    assert_eq!(reopened.verify_files().unwrap().files, 10);
}

#[test]
fn initrd_store_without_base_starts_with_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    let store = InitrdStore::new(None, tmp.path().join("out.img"));
    let published = store.publish(&map).unwrap();
    let out = fs::read(tmp.path().join("out.img")).unwrap();
    assert_eq!(out.len() as u64, published.bytes);
    assert_eq!(read_archive(&out).unwrap().len, out.len());
}

/// Compatibility with a real reader: GNU cpio extracts what we wrote after the base initrd.
#[test]
fn real_cpio_extracts_the_appended_archive() {
    let cpio = Path::new("/usr/bin/cpio");
    if !cpio.exists() {
        eprintln!("skipped: /usr/bin/cpio not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    fs::write(tmp.path().join("base.img"), bytes(7, 77)).unwrap();
    let store = InitrdStore::new(
        Some(tmp.path().join("base.img")),
        tmp.path().join("out.img"),
    );
    store.publish(&map).unwrap();
    let out = fs::read(tmp.path().join("out.img")).unwrap();

    let dest = tmp.path().join("extracted");
    fs::create_dir(&dest).unwrap();
    let mut child = Command::new(cpio)
        .args(["-i", "--make-directories", "--no-preserve-owner", "--quiet"])
        .current_dir(&dest)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&out[80..]).unwrap();
    }
    assert!(child.wait().unwrap().success(), "cpio -i failed");

    let extracted = dest.join("overboot/ssm");
    for (rel, content) in map_files(&map) {
        let got = fs::read(extracted.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(got, content, "{rel}");
    }
    assert_eq!(mode(&extracted), 0o700);
    assert_eq!(mode(&extracted.join("trees/redis/pages-1.img")), 0o600);
    SaveStateMap::open(&extracted)
        .unwrap()
        .verify_files()
        .unwrap();
}

#[test]
fn flipped_byte_is_named_and_other_trees_still_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    let victim = map.path_of("trees/redis/pages-1.img");
    let mut content = fs::read(&victim).unwrap();
    content[5000] ^= 0x40;
    fs::write(&victim, content).unwrap();

    let expected_sha = map.manifest().files["trees/redis/pages-1.img"]
        .digest
        .clone();
    match map.verify_files() {
        Err(HandoverError::ImageCorrupt {
            path,
            algorithm,
            expected,
            actual,
        }) => {
            assert_eq!(algorithm, DigestAlgorithm::Xxh64);
            assert_eq!(path, "trees/redis/pages-1.img");
            assert_eq!(expected, expected_sha);
            assert_ne!(actual, expected_sha);
        }
        other => panic!("expected ImageCorrupt, got {other:?}"),
    }
    assert!(matches!(
        map.verify_tree("redis.service"),
        Err(HandoverError::ImageCorrupt { path, .. }) if path == "trees/redis/pages-1.img"
    ));
    assert_eq!(map.verify_tree("pid:4242").unwrap().files, 4);
    assert!(matches!(
        map.verify_tree("nginx.service"),
        Err(HandoverError::UnknownTree { .. })
    ));
    // A damaged map is not published either.
    let store = InitrdStore::new(None, tmp.path().join("out.img"));
    assert!(matches!(
        store.publish(&map),
        Err(HandoverError::ImageCorrupt { path, .. }) if path == "trees/redis/pages-1.img"
    ));
}

#[test]
fn missing_resized_unlisted_and_symlinked_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    fs::write(map.path_of("trees/redis/stray.img"), b"x").unwrap();
    assert!(matches!(
        map.verify_files(),
        Err(HandoverError::Unlisted { path }) if path == "trees/redis/stray.img"
    ));
    assert!(matches!(
        map.verify_tree("redis.service"),
        Err(HandoverError::Unlisted { .. })
    ));
    assert_eq!(map.verify_tree("pid:4242").unwrap().files, 4);
    fs::remove_file(map.path_of("trees/redis/stray.img")).unwrap();

    fs::write(map.path_of("logs/dump.log"), b"longer than before\n").unwrap();
    assert!(matches!(
        map.verify_files(),
        Err(HandoverError::ImageSize { path, expected: 8, actual: 19 }) if path == "logs/dump.log"
    ));

    fs::remove_file(map.path_of("logs/dump.log")).unwrap();
    assert!(matches!(
        map.verify_files(),
        Err(HandoverError::ImageMissing { path }) if path == "logs/dump.log"
    ));

    std::os::unix::fs::symlink("/etc/passwd", map.path_of("logs/dump.log")).unwrap();
    assert!(matches!(
        map.verify_files(),
        Err(HandoverError::NotRegular { path }) if path == "logs/dump.log"
    ));
}

fn rewrite(path: PathBuf, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut content = fs::read(&path).unwrap();
    edit(&mut content);
    fs::write(&path, content).unwrap();
}

#[test]
fn damaged_header_or_manifest_is_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    let dir = map.dir().to_path_buf();
    let pristine_header = fs::read(dir.join("HEADER")).unwrap();
    let pristine_manifest = fs::read(dir.join("manifest.json")).unwrap();
    let restore = || {
        fs::write(dir.join("HEADER"), &pristine_header).unwrap();
        fs::write(dir.join("manifest.json"), &pristine_manifest).unwrap();
    };

    rewrite(dir.join("manifest.json"), |m| m.truncate(m.len() - 10));
    assert!(matches!(
        SaveStateMap::open(&dir),
        Err(HandoverError::ManifestLength { actual, expected }) if actual + 10 == expected
    ));
    restore();

    rewrite(dir.join("manifest.json"), |m| {
        let at = m.iter().position(|&b| b == b'4').unwrap();
        m[at] = b'5';
    });
    assert!(matches!(
        SaveStateMap::open(&dir),
        Err(HandoverError::ManifestDigest { .. })
    ));
    restore();

    rewrite(dir.join("HEADER"), |h| h[0] = b'X');
    assert!(matches!(
        SaveStateMap::open(&dir),
        Err(HandoverError::Header(HeaderError::BadMagic { .. }))
    ));
    restore();

    rewrite(dir.join("HEADER"), |h| {
        h[8..10].copy_from_slice(&4u16.to_le_bytes())
    });
    match SaveStateMap::open(&dir) {
        Err(HandoverError::Header(HeaderError::UnsupportedMajor { found, .. })) => {
            assert_eq!(found.major, 4);
        }
        other => panic!("expected UnsupportedMajor, got {other:?}"),
    }
    restore();

    rewrite(dir.join("HEADER"), |h| h.truncate(20));
    assert!(matches!(
        SaveStateMap::open(&dir),
        Err(HandoverError::Header(HeaderError::Length { actual: 20 }))
    ));
    restore();

    fs::remove_file(dir.join("HEADER")).unwrap();
    assert!(matches!(
        SaveStateMap::open(&dir),
        Err(HandoverError::Io { .. })
    ));
    restore();
    SaveStateMap::open(&dir).unwrap().verify_files().unwrap();
}

#[test]
fn writer_refuses_unlisted_dangling_and_duplicate_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut writer = SaveStateMap::create(tmp.path().join("ssm")).unwrap();
    writer.add_bytes("a/x", b"1").unwrap();
    assert!(matches!(
        writer.add_bytes("a/x", b"2"),
        Err(HandoverError::Duplicate { .. })
    ));
    assert!(writer.add_bytes("../escape", b"2").is_err());
    fs::write(writer.dir().join("a/stray"), b"?").unwrap();
    assert!(matches!(
        writer.finish(Manifest::default()),
        Err(HandoverError::Unlisted { path }) if path == "a/stray"
    ));

    let mut writer = SaveStateMap::create(tmp.path().join("ssm2")).unwrap();
    writer.add_bytes("a/x", b"1").unwrap();
    let manifest = Manifest {
        trees: vec![tree("redis.service", 300, "trees/redis")],
        ..Manifest::default()
    };
    assert!(matches!(
        writer.finish(manifest),
        Err(HandoverError::Dangling { path }) if path == "trees/redis"
    ));

    let map = build_map(&tmp.path().join("finished"));
    assert!(matches!(
        SaveStateMap::create(map.dir()),
        Err(HandoverError::AlreadyFinished { .. })
    ));
}

#[test]
fn directory_store_copies_a_map_that_opens_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    let dest = tmp.path().join("persist/overboot/ssm");
    let store = DirectoryStore { path: dest.clone() };
    let published = store.publish(&map).unwrap();
    assert_eq!(store.kind(), "dir");
    assert_eq!(
        published.cmdline_param,
        format!("overboot.handover=dir:{}", dest.display())
    );
    assert_eq!(published.initrd, None);
    let copy = SaveStateMap::open(
        locate_from_cmdline(&published.cmdline_param)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(copy.manifest(), map.manifest());
    assert_eq!(copy.verify_files().unwrap().files, 10);
    assert_eq!(mode(&dest), 0o700);
    assert_eq!(mode(&dest.join("trees/redis/sub/fdinfo-2.img")), 0o600);
    assert!(matches!(
        store.publish(&map),
        Err(HandoverError::Store(StoreError::DestinationExists { .. }))
    ));
    let relative = DirectoryStore {
        path: "relative/ssm".into(),
    };
    assert!(matches!(
        relative.publish(&map),
        Err(HandoverError::Store(StoreError::NotCmdlineSafe { .. }))
    ));
}

#[test]
fn directory_store_in_place_flushes_without_copying_and_refuses_a_truncated_file() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    let store = DirectoryStore {
        path: map.dir().to_path_buf(),
    };
    let listing = || {
        let mut names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    let published = store.publish(&map).unwrap();
    assert_eq!(
        published.cmdline_param,
        format!("overboot.handover=dir:{}", map.dir().display())
    );
    assert_eq!(published.initrd, None);
    let total: u64 = map.manifest().files.values().map(|f| f.size).sum();
    assert!(published.bytes > total, "{} <= {total}", published.bytes);
    assert_eq!(listing(), before, "nothing copied beside the map");
    assert_eq!(
        SaveStateMap::open(map.dir())
            .unwrap()
            .verify_files()
            .unwrap()
            .files,
        10
    );

    // A file that lost bytes after the map was finished is not handed over (its digest is the
    // new kernel's check).
    let page = map.dir().join("trees/redis/pages-1.img");
    let mut data = fs::read(&page).unwrap();
    data.truncate(100);
    fs::write(&page, data).unwrap();
    assert!(matches!(
        store.publish(&map),
        Err(HandoverError::ImageSize { path, .. }) if path == "trees/redis/pages-1.img"
    ));
}

#[test]
fn sealed_pre_copy_images_verify_and_a_resized_one_is_hashed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut writer = SaveStateMap::create(tmp.path().join("ssm")).unwrap();
    let pre1 = writer.create_dir("trees/redis/pre-1").unwrap();
    fs::write(pre1.join("pages-1.img"), bytes(1, 40_000)).unwrap();
    fs::write(pre1.join("pagemap-7.img"), bytes(2, 100)).unwrap();
    assert_eq!(writer.seal_dir("trees/redis/pre-1").unwrap(), 40_100);
    // A second round that failed half-way is forgotten with its directory.
    let pre2 = writer.create_dir("trees/redis/pre-2").unwrap();
    fs::write(pre2.join("pages-1.img"), bytes(3, 10)).unwrap();
    assert_eq!(writer.seal_dir("trees/redis/pre-2").unwrap(), 10);
    writer.discard_dir("trees/redis/pre-2").unwrap();
    assert!(!pre2.exists());
    // The final dump beside them; a sealed file changed after sealing is hashed again.
    let dir = writer.create_dir("trees/redis").unwrap();
    fs::write(dir.join("core-7.img"), bytes(4, 300)).unwrap();
    fs::write(pre1.join("pagemap-7.img"), bytes(5, 101)).unwrap();
    writer.adopt_tree("trees/redis").unwrap();
    let map = writer
        .finish(Manifest {
            trees: vec![tree("redis.service", 7, "trees/redis")],
            ..Manifest::default()
        })
        .unwrap();
    let files: Vec<&String> = map.manifest().files.keys().collect();
    assert_eq!(
        files,
        [
            "trees/redis/core-7.img",
            "trees/redis/pre-1/pagemap-7.img",
            "trees/redis/pre-1/pages-1.img"
        ]
    );
    let report = SaveStateMap::open(map.dir())
        .unwrap()
        .verify_files()
        .unwrap();
    assert_eq!(report.bytes, 40_000 + 101 + 300);
}

#[test]
fn a_split_verification_defers_only_the_digests_it_was_told_to() {
    let tmp = tempfile::tempdir().unwrap();
    let map = build_map(tmp.path());
    let pages = |rel: &str| {
        rel.rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with("pages-"))
    };
    let (now, later) = map.verify_split(pages).unwrap();
    assert_eq!(now.files, 8);
    assert_eq!(later.bytes(), 2 * 10_003);
    assert_eq!(later.verify().unwrap().files, 2);

    // A damaged page file passes the first part and is named by the deferred one.
    let victim = map.path_of("trees/redis/pages-1.img");
    let mut content = fs::read(&victim).unwrap();
    content[5000] ^= 0x40;
    fs::write(&victim, &content).unwrap();
    let (_, later) = map.verify_split(pages).unwrap();
    assert!(matches!(
        later.verify(),
        Err(HandoverError::ImageCorrupt { path, .. }) if path == "trees/redis/pages-1.img"
    ));
    // Sizes are checked at once even for deferred files.
    content.push(0);
    fs::write(&victim, &content).unwrap();
    assert!(matches!(
        map.verify_split(pages),
        Err(HandoverError::ImageSize { path, .. }) if path == "trees/redis/pages-1.img"
    ));
    // Everything else is hashed at once.
    content.pop();
    content[5000] ^= 0x40;
    fs::write(&victim, &content).unwrap();
    let core = map.path_of("trees/redis/core-4242.img");
    let mut bytes = fs::read(&core).unwrap();
    bytes[0] ^= 1;
    fs::write(&core, bytes).unwrap();
    assert!(matches!(
        map.verify_split(pages),
        Err(HandoverError::ImageCorrupt { path, .. }) if path == "trees/redis/core-4242.img"
    ));
}

#[test]
fn pieces_left_to_their_user_are_skipped_and_every_other_piece_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut writer = SaveStateMap::create(tmp.path().join("ssm")).unwrap();
    let dir = writer.create_dir("trees/redis").unwrap();
    let mib = usize::try_from(overboot_handover::CHUNK_BYTES).unwrap();
    let big = bytes(7, 3 * mib + 100);
    fs::write(dir.join("pages-1.img"), &big).unwrap();
    fs::write(dir.join("pages-2.img"), bytes(8, 4096)).unwrap();
    fs::write(dir.join("core-1.img"), bytes(9, 100)).unwrap();
    writer.adopt_tree("trees/redis").unwrap();
    let mut manifest = Manifest {
        trees: vec![tree("redis", 1, "trees/redis")],
        ..Manifest::default()
    };
    manifest.rollback.kernel = "/boot/vmlinuz".into();
    let map = writer.finish(manifest).unwrap();
    // Format 3.1: the large page file carries the digest of each 1 MiB piece, the small
    // files none.
    let entry = &map.manifest().files["trees/redis/pages-1.img"];
    assert_eq!(entry.chunks.len(), 4);
    assert_eq!(
        entry.chunks[3],
        overboot_handover::chunk_digest(&big[3 * mib..])
    );
    assert!(map.manifest().files["trees/redis/pages-2.img"]
        .chunks
        .is_empty());

    let pages = |rel: &str| rel.contains("/pages-");
    let (_, later) = map.verify_split(pages).unwrap();
    // Damage in piece 1: named when that piece is checked, not when it is left to its user.
    let victim = map.path_of("trees/redis/pages-1.img");
    let mut content = fs::read(&victim).unwrap();
    content[mib + 5] ^= 0x40;
    fs::write(&victim, &content).unwrap();
    let skip_1 = |rel: &str, piece: usize| rel.ends_with("pages-1.img") && piece == 1;
    let report = later.verify_except(skip_1).unwrap();
    assert_eq!(report.files, 2);
    assert_eq!(report.bytes, (2 * mib + 100 + 4096) as u64);
    let skip_0 = |rel: &str, piece: usize| rel.ends_with("pages-1.img") && piece == 0;
    match later.verify_except(skip_0) {
        Err(HandoverError::ImageCorrupt { path, .. }) => {
            assert_eq!(
                path,
                format!("trees/redis/pages-1.img (bytes {mib}..{})", 2 * mib)
            );
        }
        other => panic!("expected the damaged piece named, got {other:?}"),
    }
    // Skipping nothing checks the file whole.
    assert!(matches!(
        later.verify_except(|_, _| false),
        Err(HandoverError::ImageCorrupt { path, .. }) if path == "trees/redis/pages-1.img"
    ));
}
