//! Kerberos through the system's GSSAPI (MIT's `libgssapi_krb5.so.2`, or Heimdal's
//! `libgssapi.so.3`), loaded at run time: a machine without Kerberos runs viaduct without
//! Negotiate, and `cargo build` needs no headers or libclang.
//!
//! Why a hand-written binding of six functions instead of the `libgssapi` crate: that crate
//! links the library at build time through bindgen (libclang in every build, and a binary that
//! does not start where the library is absent). The C interface used here is RFC 2744's and
//! has been stable for twenty years.
//!
//! A context is stepped on a blocking thread (the library may ask the KDC for a service
//! ticket over the network). The default credentials cache (`KRB5CCNAME`, or the
//! per-user default) and `KRB5_CONFIG` are read by the library on every new context, so a
//! ticket obtained after viaduct started is used without a restart.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::OnceLock;

type Uint = u32;

#[repr(C)]
struct Buffer {
    length: usize,
    value: *mut c_void,
}

#[repr(C)]
struct Oid {
    length: Uint,
    elements: *const c_void,
}

type Name = *mut c_void;
type Ctx = *mut c_void;

type ImportName = unsafe extern "C" fn(*mut Uint, *mut Buffer, *const Oid, *mut Name) -> Uint;
type InitSecContext = unsafe extern "C" fn(
    *mut Uint,
    *mut c_void,
    *mut Ctx,
    Name,
    *const Oid,
    Uint,
    Uint,
    *mut c_void,
    *mut Buffer,
    *mut *mut Oid,
    *mut Buffer,
    *mut Uint,
    *mut Uint,
) -> Uint;
type ReleaseBuffer = unsafe extern "C" fn(*mut Uint, *mut Buffer) -> Uint;
type ReleaseName = unsafe extern "C" fn(*mut Uint, *mut Name) -> Uint;
type DeleteSecContext = unsafe extern "C" fn(*mut Uint, *mut Ctx, *mut Buffer) -> Uint;
type DisplayStatus =
    unsafe extern "C" fn(*mut Uint, Uint, i32, *const Oid, *mut Uint, *mut Buffer) -> Uint;

/// 1.2.840.113554.1.2.1.4: GSS_C_NT_HOSTBASED_SERVICE (`service@host` names).
const NT_HOSTBASED_SERVICE: [u8; 10] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x01, 0x04];
/// 1.3.6.1.5.5.2: SPNEGO, what HTTP Negotiate carries (RFC 4559).
const SPNEGO: [u8; 6] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];

const COMPLETE: Uint = 0;
const CONTINUE_NEEDED: Uint = 1;
const GSS_C_GSS_CODE: i32 = 1;
const GSS_C_MECH_CODE: i32 = 2;
const MUTUAL_FLAG: Uint = 2;
const SEQUENCE_FLAG: Uint = 8;

struct Api {
    /// Where the functions below live; kept loaded for the process's life.
    _lib: libloading::Library,
    name: &'static str,
    import_name: ImportName,
    init_sec_context: InitSecContext,
    release_buffer: ReleaseBuffer,
    release_name: ReleaseName,
    delete_sec_context: DeleteSecContext,
    display_status: DisplayStatus,
}

const CANDIDATES: [&str; 3] = ["libgssapi_krb5.so.2", "libgssapi.so.3", "libgssapi_krb5.so"];

fn load() -> Result<Api, String> {
    let mut last = String::new();
    for name in CANDIDATES {
        // SAFETY: loading a system library runs its initialisers; the GSSAPI libraries' are
        // side-effect free (they register error tables).
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => {
                // SAFETY: each symbol is looked up with the signature RFC 2744 gives it.
                let api = unsafe {
                    Api {
                        import_name: *lib
                            .get::<ImportName>(b"gss_import_name\0")
                            .map_err(|e| e.to_string())?,
                        init_sec_context: *lib
                            .get::<InitSecContext>(b"gss_init_sec_context\0")
                            .map_err(|e| e.to_string())?,
                        release_buffer: *lib
                            .get::<ReleaseBuffer>(b"gss_release_buffer\0")
                            .map_err(|e| e.to_string())?,
                        release_name: *lib
                            .get::<ReleaseName>(b"gss_release_name\0")
                            .map_err(|e| e.to_string())?,
                        delete_sec_context: *lib
                            .get::<DeleteSecContext>(b"gss_delete_sec_context\0")
                            .map_err(|e| e.to_string())?,
                        display_status: *lib
                            .get::<DisplayStatus>(b"gss_display_status\0")
                            .map_err(|e| e.to_string())?,
                        name,
                        _lib: lib,
                    }
                };
                return Ok(api);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn api() -> Result<&'static Api, &'static str> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| e.as_str())
}

/// Which GSSAPI library is loaded (`libgssapi_krb5.so.2`), or why none is.
pub fn availability() -> Result<&'static str, &'static str> {
    api().map(|a| a.name)
}

/// A security context being established with one proxy, for one connection.
pub struct Context {
    api: &'static Api,
    ctx: Ctx,
    target: Name,
}

// SAFETY: a GSSAPI context and name are heap objects owned by this value alone; MIT and
// Heimdal allow them to be used from any thread as long as one thread at a time does.
unsafe impl Send for Context {}

/// What a step produced.
pub enum Step {
    /// Send this token; the context is established (or the server's answer is not needed).
    Done(Vec<u8>),
    /// Send this token and expect one back.
    Continue(Vec<u8>),
}

impl Context {
    /// A context toward `service@host` (`HTTP@proxy.corp.example`).
    pub fn new(service_at_host: &str) -> Result<Self, String> {
        let api = api().map_err(|e| format!("no GSSAPI library ({e})"))?;
        let mut minor = 0;
        let mut text = service_at_host.as_bytes().to_vec();
        let mut buf = Buffer {
            length: text.len(),
            value: text.as_mut_ptr().cast(),
        };
        let oid = Oid {
            length: NT_HOSTBASED_SERVICE.len() as Uint,
            elements: NT_HOSTBASED_SERVICE.as_ptr().cast(),
        };
        let mut target: Name = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the name is released in Drop.
        let major = unsafe { (api.import_name)(&mut minor, &mut buf, &oid, &mut target) };
        if major != COMPLETE {
            return Err(describe(api, major, minor));
        }
        Ok(Self {
            api,
            ctx: std::ptr::null_mut(),
            target,
        })
    }

    /// One step: `input` is the server's token (none for the first).
    pub fn step(&mut self, input: Option<&[u8]>) -> Result<Step, String> {
        let mut minor = 0;
        let mut input_bytes = input.map(<[u8]>::to_vec).unwrap_or_default();
        let mut input_buf = Buffer {
            length: input_bytes.len(),
            value: input_bytes.as_mut_ptr().cast(),
        };
        let mut output = Buffer {
            length: 0,
            value: std::ptr::null_mut(),
        };
        let mech = Oid {
            length: SPNEGO.len() as Uint,
            elements: SPNEGO.as_ptr().cast(),
        };
        // SAFETY: the context, name and buffers are valid; the output buffer is released
        // below with the library's own function.
        let major = unsafe {
            (self.api.init_sec_context)(
                &mut minor,
                std::ptr::null_mut(),
                &mut self.ctx,
                self.target,
                &mech,
                MUTUAL_FLAG | SEQUENCE_FLAG,
                0,
                std::ptr::null_mut(),
                if input.is_some() {
                    &mut input_buf
                } else {
                    std::ptr::null_mut()
                },
                std::ptr::null_mut(),
                &mut output,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let token = if output.value.is_null() || output.length == 0 {
            Vec::new()
        } else {
            // SAFETY: the library wrote `length` bytes at `value`.
            unsafe { std::slice::from_raw_parts(output.value.cast::<u8>(), output.length) }.to_vec()
        };
        let mut m2 = 0;
        // SAFETY: releasing the buffer the library allocated.
        unsafe { (self.api.release_buffer)(&mut m2, &mut output) };
        match major {
            COMPLETE => Ok(Step::Done(token)),
            CONTINUE_NEEDED => Ok(Step::Continue(token)),
            _ => Err(describe(self.api, major, minor)),
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let mut minor = 0;
        // SAFETY: both handles were made by the library (or are null, which it accepts).
        unsafe {
            if !self.ctx.is_null() {
                (self.api.delete_sec_context)(&mut minor, &mut self.ctx, std::ptr::null_mut());
            }
            if !self.target.is_null() {
                (self.api.release_name)(&mut minor, &mut self.target);
            }
        }
    }
}

/// The library's own words for a failure (major, then mechanism, e.g. "No Kerberos
/// credentials available (default cache: FILE:/tmp/krb5cc_0)").
fn describe(api: &Api, major: Uint, minor: Uint) -> String {
    let mut words = Vec::new();
    for (code, kind) in [(major, GSS_C_GSS_CODE), (minor, GSS_C_MECH_CODE)] {
        if code == 0 {
            continue;
        }
        let mut more = 0;
        for _ in 0..4 {
            let mut m = 0;
            let mut out = Buffer {
                length: 0,
                value: std::ptr::null_mut(),
            };
            // SAFETY: a status code and a buffer the library fills and we release.
            let r = unsafe {
                (api.display_status)(&mut m, code, kind, std::ptr::null(), &mut more, &mut out)
            };
            if r == COMPLETE && !out.value.is_null() {
                // SAFETY: `length` bytes written by the library.
                let s = unsafe { std::slice::from_raw_parts(out.value.cast::<u8>(), out.length) };
                let s = String::from_utf8_lossy(s).trim().to_owned();
                if !s.is_empty() && !words.contains(&s) {
                    words.push(s);
                }
            }
            // SAFETY: as above.
            unsafe { (api.release_buffer)(&mut m, &mut out) };
            if more == 0 {
                break;
            }
        }
    }
    if words.is_empty() {
        format!("GSSAPI error {major:#x}/{minor:#x}")
    } else {
        words.join(": ")
    }
}
