//! The C ABI's error paths, called from Rust as C would call them: NULL pointers, bad
//! sizes, nodes and flags give a NULL or negative return and a reason, never a crash.

use std::ffi::{c_int, c_long, CStr};

use pagemig_capi::*;
fn last_error() -> String {
    // SAFETY: pagemig_last_error returns a NUL-terminated string owned by this thread.
    unsafe { CStr::from_ptr(pagemig_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn bad_input_is_a_null_or_negative_return_with_a_reason_never_a_crash() {
    // SAFETY: every pointer passed is NULL, a valid C string, or a live handle.
    unsafe {
        assert!(pagemig_ctx_new(std::ptr::null(), 2, 4 << 20).is_null());
        assert_eq!(last_error(), "engine is NULL");
        assert!(pagemig_ctx_new(c"batch".as_ptr(), 1, 4 << 20).is_null());
        assert!(last_error().contains("2 to 8"), "{}", last_error());
        assert!(pagemig_ctx_new(c"batch".as_ptr(), 2, 3 << 20).is_null());
        assert!(
            last_error().contains("multiple of 2 MiB"),
            "{}",
            last_error()
        );
        assert!(pagemig_ctx_new(c"mtcopy:x".as_ptr(), 2, 4 << 20).is_null());
        assert!(last_error().contains("mtcopy:x"), "{}", last_error());

        let ctx = pagemig_ctx_new(c"batch".as_ptr(), 2, 4 << 20);
        assert!(!ctx.is_null(), "{}", last_error());
        assert_eq!(pagemig_ctx_nr_nodes(ctx), 2);
        assert_eq!(pagemig_ctx_nr_nodes(std::ptr::null()), 0);
        let mut info = PagemigNodeInfo::default();
        assert_eq!(pagemig_node_info(ctx, 1, &mut info), 0);
        assert_eq!(info.total_bytes, 4 << 20);
        assert_eq!(pagemig_node_info(ctx, 2, &mut info), -libc::ENODEV);
        assert_eq!(
            pagemig_node_info(ctx, 0, std::ptr::null_mut()),
            -libc::EINVAL
        );
        assert_eq!(pagemig_counters(ctx, std::ptr::null_mut()), -libc::EINVAL);

        assert!(pagemig_region_new(ctx, 4096 + 1, 0, 0).is_null());
        assert!(last_error().contains("multiple"), "{}", last_error());
        assert!(pagemig_region_new(ctx, 2 << 20, 10, 0).is_null());
        assert!(pagemig_region_new(ctx, 2 << 20, 0, 5).is_null());
        assert!(pagemig_region_new(std::ptr::null_mut(), 4096, 0, 0).is_null());

        let r = pagemig_region_new(ctx, 64 << 10, 0, 1);
        assert!(!r.is_null(), "{}", last_error());
        assert_eq!(pagemig_region_len(r), 64 << 10);
        assert_eq!(pagemig_region_len(std::ptr::null()), 0);
        assert!(pagemig_region_addr(std::ptr::null()).is_null());
        let mut st = [0 as c_int; 1];
        let page = [pagemig_region_addr(r)];
        // A first touch from node 1's pool, then a query of where it is.
        page[0].cast::<u8>().write_volatile(7);
        assert_eq!(
            pagemig_move_pages(r, 1, page.as_ptr(), std::ptr::null(), st.as_mut_ptr(), 0),
            0
        );
        assert_eq!(st, [1]);
        assert_eq!(
            pagemig_move_pages(
                std::ptr::null_mut(),
                0,
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null_mut(),
                0
            ),
            -(libc::EINVAL as c_long)
        );
        assert_eq!(
            pagemig_move_pages(r, 1, std::ptr::null(), std::ptr::null(), st.as_mut_ptr(), 0),
            -(libc::EINVAL as c_long)
        );
        let to = [7 as c_int];
        assert_eq!(
            pagemig_move_pages(
                r,
                1,
                page.as_ptr(),
                to.as_ptr(),
                st.as_mut_ptr(),
                PAGEMIG_MPOL_MF_MOVE
            ),
            -(libc::ENODEV as c_long)
        );
        assert_eq!(
            pagemig_move_pages(
                r,
                0,
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null_mut(),
                0
            ),
            0
        );
        // Either order of freeing; NULL is a no-op.
        pagemig_ctx_free(ctx);
        assert_eq!(page[0].cast::<u8>().read_volatile(), 7);
        pagemig_region_free(r);
        pagemig_region_free(std::ptr::null_mut());
        pagemig_ctx_free(std::ptr::null_mut());
    }
}
