//! Gives the library the real driver's SONAME, so the dynamic loader treats it as
//! `libcuda.so.1` (one copy per process, whichever name or path loaded it first).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
}
