//! CRIU's RPC messages (`images/rpc.proto`), written by hand as prost structs.
//!
//! These are the wire types of the checkpoint step: every request we send to `criu swrk` and every
//! answer it gives is one of the messages below, one protobuf message per SEQPACKET packet. The
//! field numbers and types are copied from `images/rpc.proto` of CRIU (checked against v3.17.1,
//! the version Debian ships, and against upstream master of 2025-11). The file is proto2:
//! `required` fields are always encoded, `optional` fields only when set (`Option`).
//!
//! We do not run `protoc` or a build script: the handful of messages is stable, and writing them
//! here keeps the build hermetic. Fields newer than 3.17 (`images_dir`, `leave_stopped`,
//! `display_stats`, `log_to_stderr`) are listed so that a newer CRIU can be driven, but a 3.17
//! CRIU silently ignores unknown fields, so we never rely on them.

/// `criu_req_type`: what a request asks for; a response echoes the type it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CriuReqType {
    /// Sent by CRIU for errors not tied to a request ("Invalid req").
    Empty = 0,
    /// Checkpoint a process tree.
    Dump = 1,
    /// Restore a process tree.
    Restore = 2,
    /// Check that the kernel has what CRIU needs.
    Check = 3,
    /// Iterative pre-dump; CRIU then waits for another PRE_DUMP or a DUMP on the same socket.
    PreDump = 4,
    /// Start a page server.
    PageServer = 5,
    /// A notification (from CRIU) or its acknowledgement (from us).
    Notify = 6,
    /// Dump the CPU info.
    CpuinfoDump = 7,
    /// Check the CPU info against a dump.
    CpuinfoCheck = 8,
    /// Ask which optional features work here.
    FeatureCheck = 9,
    /// Ask CRIU's version.
    Version = 10,
    /// Wait for a pid (for a page server child).
    WaitPid = 11,
    /// Start a page server as a child.
    PageServerChld = 12,
    /// One pre-dump; CRIU answers and is done.
    SinglePreDump = 13,
}

/// `criu_cg_mode`: how CRIU handles cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CriuCgMode {
    /// Leave cgroups alone.
    Ignore = 0,
    /// No cgroup handling.
    CgNone = 1,
    /// Restore properties only.
    Props = 2,
    /// Soft mode.
    Soft = 3,
    /// Full mode.
    Full = 4,
    /// Strict mode.
    Strict = 5,
    /// CRIU's default.
    Default = 6,
}

/// `criu_network_lock_method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CriuNetworkLockMethod {
    /// iptables rules (CRIU's default).
    Iptables = 1,
    /// An nftables table `inet CRIU-<pid>`.
    Nftables = 2,
    /// No lock: the caller locks the network itself (e.g. in the `network-lock` notification).
    Skip = 3,
}

/// `criu_pre_dump_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CriuPreDumpMode {
    /// vmsplice pages into pipes (default).
    Splice = 1,
    /// process_vm_readv.
    VmRead = 2,
}

/// `criu_page_server_info`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuPageServerInfo {
    #[prost(string, optional, tag = "1")]
    pub address: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub port: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    pub pid: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    pub fd: Option<i32>,
}

/// `criu_veth_pair` (deprecated upstream in favour of `external`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuVethPair {
    #[prost(string, required, tag = "1")]
    pub if_in: String,
    #[prost(string, required, tag = "2")]
    pub if_out: String,
}

/// `ext_mount_map` (deprecated upstream in favour of `external`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtMountMap {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub val: String,
}

/// `inherit_fd`: an fd of ours (swrk only) that the restored tree gets in place of `key`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InheritFd {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(int32, required, tag = "2")]
    pub fd: i32,
}

/// `criu_opts`: the options of one request (the command line of `criu dump`/`restore`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuOpts {
    /// An fd in the *peer's* process (see `criu` module docs), or -1.
    #[prost(int32, required, tag = "1", default = "-1")]
    pub images_dir_fd: i32,
    /// Target pid; CRIU dumps the peer itself when unset.
    #[prost(int32, optional, tag = "2")]
    pub pid: Option<i32>,
    #[prost(bool, optional, tag = "3")]
    pub leave_running: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub ext_unix_sk: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    pub tcp_established: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub evasive_devices: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub shell_job: Option<bool>,
    #[prost(bool, optional, tag = "8")]
    pub file_locks: Option<bool>,
    #[prost(int32, optional, tag = "9", default = "2")]
    pub log_level: Option<i32>,
    /// A file name in the work dir; no `/` allowed.
    #[prost(string, optional, tag = "10")]
    pub log_file: Option<String>,
    #[prost(message, optional, tag = "11")]
    pub ps: Option<CriuPageServerInfo>,
    #[prost(bool, optional, tag = "12")]
    pub notify_scripts: Option<bool>,
    #[prost(string, optional, tag = "13")]
    pub root: Option<String>,
    /// Parent image dir, relative to the images dir (or absolute).
    #[prost(string, optional, tag = "14")]
    pub parent_img: Option<String>,
    #[prost(bool, optional, tag = "15")]
    pub track_mem: Option<bool>,
    #[prost(bool, optional, tag = "16")]
    pub auto_dedup: Option<bool>,
    #[prost(int32, optional, tag = "17")]
    pub work_dir_fd: Option<i32>,
    #[prost(bool, optional, tag = "18")]
    pub link_remap: Option<bool>,
    #[prost(message, repeated, tag = "19")]
    pub veths: Vec<CriuVethPair>,
    #[prost(uint32, optional, tag = "20", default = "4294967295")]
    pub cpu_cap: Option<u32>,
    #[prost(bool, optional, tag = "21")]
    pub force_irmap: Option<bool>,
    #[prost(string, repeated, tag = "22")]
    pub exec_cmd: Vec<String>,
    #[prost(message, repeated, tag = "23")]
    pub ext_mnt: Vec<ExtMountMap>,
    #[prost(bool, optional, tag = "24")]
    pub manage_cgroups: Option<bool>,
    /// Restore the tree as our child instead of criu's (swrk only).
    #[prost(bool, optional, tag = "26")]
    pub rst_sibling: Option<bool>,
    #[prost(message, repeated, tag = "27")]
    pub inherit_fd: Vec<InheritFd>,
    #[prost(bool, optional, tag = "28")]
    pub auto_ext_mnt: Option<bool>,
    #[prost(bool, optional, tag = "29")]
    pub ext_sharing: Option<bool>,
    #[prost(bool, optional, tag = "30")]
    pub ext_masters: Option<bool>,
    #[prost(string, repeated, tag = "31")]
    pub skip_mnt: Vec<String>,
    #[prost(string, repeated, tag = "32")]
    pub enable_fs: Vec<String>,
    #[prost(enumeration = "CriuCgMode", optional, tag = "34")]
    pub manage_cgroups_mode: Option<i32>,
    #[prost(uint32, optional, tag = "35", default = "1048576")]
    pub ghost_limit: Option<u32>,
    #[prost(string, repeated, tag = "36")]
    pub irmap_scan_paths: Vec<String>,
    /// `--external` specs, e.g. `unix[<inode>]`, `tcp[...]`, `mnt[...]`.
    #[prost(string, repeated, tag = "37")]
    pub external: Vec<String>,
    #[prost(uint32, optional, tag = "38")]
    pub empty_ns: Option<u32>,
    #[prost(string, optional, tag = "44")]
    pub freeze_cgroup: Option<String>,
    /// Seconds CRIU waits for the tree to freeze.
    #[prost(uint32, optional, tag = "45")]
    pub timeout: Option<u32>,
    #[prost(bool, optional, tag = "46")]
    pub tcp_skip_in_flight: Option<bool>,
    #[prost(bool, optional, tag = "47")]
    pub weak_sysctls: Option<bool>,
    #[prost(bool, optional, tag = "48")]
    pub lazy_pages: Option<bool>,
    #[prost(int32, optional, tag = "49")]
    pub status_fd: Option<i32>,
    #[prost(bool, optional, tag = "50")]
    pub orphan_pts_master: Option<bool>,
    #[prost(string, optional, tag = "51")]
    pub config_file: Option<String>,
    #[prost(bool, optional, tag = "52")]
    pub tcp_close: Option<bool>,
    #[prost(string, optional, tag = "53")]
    pub lsm_profile: Option<String>,
    #[prost(
        enumeration = "CriuPreDumpMode",
        optional,
        tag = "61",
        default = "Splice"
    )]
    pub pre_dump_mode: Option<i32>,
    #[prost(string, optional, tag = "63")]
    pub lsm_mount_context: Option<String>,
    #[prost(
        enumeration = "CriuNetworkLockMethod",
        optional,
        tag = "64",
        default = "Iptables"
    )]
    pub network_lock: Option<i32>,
    #[prost(bool, optional, tag = "65")]
    pub mntns_compat_mode: Option<bool>,
    #[prost(bool, optional, tag = "66")]
    pub skip_file_rwx_check: Option<bool>,
    #[prost(bool, optional, tag = "67")]
    pub unprivileged: Option<bool>,
    /// Newer than 3.17: used only when `images_dir_fd == -1`.
    #[prost(string, optional, tag = "68")]
    pub images_dir: Option<String>,
    #[prost(bool, optional, tag = "69")]
    pub leave_stopped: Option<bool>,
    #[prost(bool, optional, tag = "70")]
    pub display_stats: Option<bool>,
    #[prost(bool, optional, tag = "71")]
    pub log_to_stderr: Option<bool>,
}

/// `criu_dump_resp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuDumpResp {
    #[prost(bool, optional, tag = "1")]
    pub restored: Option<bool>,
}

/// `criu_restore_resp`: the pid of the restored tree's root, as seen by CRIU.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuRestoreResp {
    #[prost(int32, required, tag = "1")]
    pub pid: i32,
}

/// `criu_notify`: an action-script hook reached (`network-lock`, `post-dump`, ...).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuNotify {
    #[prost(string, optional, tag = "1")]
    pub script: Option<String>,
    /// Set for `setup-namespaces` and `post-restore`: the restored root's pid.
    #[prost(int32, optional, tag = "2")]
    pub pid: Option<i32>,
}

/// `criu_features`: in a request, which features to test; in a response, which work.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuFeatures {
    #[prost(bool, optional, tag = "1")]
    pub mem_track: Option<bool>,
    #[prost(bool, optional, tag = "2")]
    pub lazy_pages: Option<bool>,
    #[prost(bool, optional, tag = "3")]
    pub pidfd_store: Option<bool>,
}

/// `criu_req`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuReq {
    #[prost(enumeration = "CriuReqType", required, tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub opts: Option<CriuOpts>,
    /// Our answer to a NOTIFY: did the hook succeed.
    #[prost(bool, optional, tag = "3")]
    pub notify_success: Option<bool>,
    /// Keep the connection for another request (VERSION, FEATURE_CHECK, page server only).
    #[prost(bool, optional, tag = "4")]
    pub keep_open: Option<bool>,
    #[prost(message, optional, tag = "5")]
    pub features: Option<CriuFeatures>,
    /// For WAIT_PID.
    #[prost(uint32, optional, tag = "6")]
    pub pid: Option<u32>,
}

/// `criu_resp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuResp {
    #[prost(enumeration = "CriuReqType", required, tag = "1")]
    pub r#type: i32,
    #[prost(bool, required, tag = "2")]
    pub success: bool,
    #[prost(message, optional, tag = "3")]
    pub dump: Option<CriuDumpResp>,
    #[prost(message, optional, tag = "4")]
    pub restore: Option<CriuRestoreResp>,
    #[prost(message, optional, tag = "5")]
    pub notify: Option<CriuNotify>,
    #[prost(message, optional, tag = "6")]
    pub ps: Option<CriuPageServerInfo>,
    #[prost(int32, optional, tag = "7")]
    pub cr_errno: Option<i32>,
    #[prost(message, optional, tag = "8")]
    pub features: Option<CriuFeatures>,
    /// The first error CRIU logged.
    #[prost(string, optional, tag = "9")]
    pub cr_errmsg: Option<String>,
    #[prost(message, optional, tag = "10")]
    pub version: Option<CriuVersionMsg>,
    #[prost(int32, optional, tag = "11")]
    pub status: Option<i32>,
}

/// `criu_version`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuVersionMsg {
    #[prost(int32, required, tag = "1")]
    pub major_number: i32,
    #[prost(int32, required, tag = "2")]
    pub minor_number: i32,
    #[prost(string, optional, tag = "3")]
    pub gitid: Option<String>,
    #[prost(int32, optional, tag = "4")]
    pub sublevel: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    pub extra: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub name: Option<String>,
}

impl CriuReq {
    /// A request of `kind` with no options.
    pub fn new(kind: CriuReqType) -> Self {
        Self {
            r#type: kind as i32,
            ..Self::default()
        }
    }
}

impl CriuResp {
    /// The request type this response answers; `None` for a number we do not know.
    pub fn kind(&self) -> Option<CriuReqType> {
        CriuReqType::try_from(self.r#type).ok()
    }
}

#[cfg(test)]
mod tests {
    //! Expected bytes are derived by hand from the proto: a key is `(field << 3) | wire_type`
    //! as a varint (wire type 0 = varint, 2 = length-delimited).
    use super::*;
    use prost::Message;

    #[test]
    fn dump_request_matches_hand_encoding() {
        let mut req = CriuReq::new(CriuReqType::Dump);
        req.opts = Some(CriuOpts {
            images_dir_fd: 5,
            pid: Some(42),
            leave_running: Some(true),
            ..CriuOpts::default()
        });
        let expected = [
            0x08, 0x01, // type = DUMP
            0x12, 0x06, // opts, 6 bytes
            0x08, 0x05, //   images_dir_fd = 5
            0x10, 0x2a, //   pid = 42
            0x18, 0x01, //   leave_running = true
        ];
        assert_eq!(req.encode_to_vec(), expected);
        assert_eq!(CriuReq::decode(&expected[..]).unwrap(), req);
    }

    #[test]
    fn required_fields_are_encoded_even_at_their_default() {
        // images_dir_fd defaults to -1 and is required: a negative int32 is a 10-byte varint.
        let mut req = CriuReq::new(CriuReqType::Check);
        req.opts = Some(CriuOpts::default());
        assert_eq!(CriuOpts::default().images_dir_fd, -1);
        let mut expected = vec![0x08, 0x03, 0x12, 0x0b, 0x08];
        expected.extend([0xff; 9]);
        expected.push(0x01);
        assert_eq!(req.encode_to_vec(), expected);
        // type EMPTY (0) is still sent: it is required too.
        assert_eq!(
            CriuReq::new(CriuReqType::Empty).encode_to_vec(),
            [0x08, 0x00]
        );
    }

    #[test]
    fn notify_ack_and_high_field_numbers() {
        let mut ack = CriuReq::new(CriuReqType::Notify);
        ack.notify_success = Some(true);
        assert_eq!(ack.encode_to_vec(), [0x08, 0x06, 0x18, 0x01]);

        // network_lock = 64: key 64 << 3 = 512 = varint 0x80 0x04; NFTABLES = 2.
        let opts = CriuOpts {
            images_dir_fd: 3,
            network_lock: Some(CriuNetworkLockMethod::Nftables as i32),
            ..CriuOpts::default()
        };
        assert_eq!(opts.encode_to_vec(), [0x08, 0x03, 0x80, 0x04, 0x02]);
    }

    #[test]
    fn responses_decode_from_hand_encoding() {
        // {type DUMP, success false, cr_errno 3, cr_errmsg "boom"}
        let failed = [
            0x08, 0x01, 0x10, 0x00, 0x38, 0x03, 0x4a, 0x04, b'b', b'o', b'o', b'm',
        ];
        let r = CriuResp::decode(&failed[..]).unwrap();
        assert_eq!(r.kind(), Some(CriuReqType::Dump));
        assert!(!r.success);
        assert_eq!(r.cr_errno, Some(3));
        assert_eq!(r.cr_errmsg.as_deref(), Some("boom"));

        // {type RESTORE, success, restore{pid 1234}}; 1234 = varint 0xd2 0x09
        let restored = [0x08, 0x02, 0x10, 0x01, 0x22, 0x03, 0x08, 0xd2, 0x09];
        let r = CriuResp::decode(&restored[..]).unwrap();
        assert_eq!(r.restore.map(|x| x.pid), Some(1234));

        // {type VERSION, success, version{3, 17, sublevel 1}}
        let version = [
            0x08, 0x0a, 0x10, 0x01, 0x52, 0x06, 0x08, 0x03, 0x10, 0x11, 0x20, 0x01,
        ];
        let v = CriuResp::decode(&version[..]).unwrap().version.unwrap();
        assert_eq!(
            (v.major_number, v.minor_number, v.sublevel),
            (3, 17, Some(1))
        );

        // {type NOTIFY, success, notify{script "network-lock"}}
        let mut notify = vec![0x08, 0x06, 0x10, 0x01, 0x2a, 0x0e, 0x0a, 0x0c];
        notify.extend_from_slice(b"network-lock");
        let n = CriuResp::decode(&notify[..]).unwrap().notify.unwrap();
        assert_eq!(n.script.as_deref(), Some("network-lock"));
        assert_eq!(n.pid, None);
    }

    #[test]
    fn garbage_is_rejected_and_a_missing_success_reads_as_failure() {
        // cut inside a length-delimited field
        assert!(CriuResp::decode(&[0x08, 0x01, 0x4a, 0x09, b'x'][..]).is_err());
        // prost does not enforce `required` on decode: a missing `success` is false (fail-safe)
        assert!(!CriuResp::decode(&[0x08, 0x01][..]).unwrap().success);
    }

    #[test]
    fn request_type_numbers_match_rpc_proto() {
        use CriuReqType as T;
        let all = [
            (T::Empty, 0),
            (T::Dump, 1),
            (T::Restore, 2),
            (T::Check, 3),
            (T::PreDump, 4),
            (T::PageServer, 5),
            (T::Notify, 6),
            (T::CpuinfoDump, 7),
            (T::CpuinfoCheck, 8),
            (T::FeatureCheck, 9),
            (T::Version, 10),
            (T::WaitPid, 11),
            (T::PageServerChld, 12),
            (T::SinglePreDump, 13),
        ];
        for (t, n) in all {
            assert_eq!(t as i32, n, "{t:?}");
        }
    }
}
