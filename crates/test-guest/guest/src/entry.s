// Tern test guest: boot entry points and everything that must run at CPL0.
//
// CPL0 code is emulated instruction by instruction on some hosts (PVM), so
// this file does the least possible there: switch to long mode with static
// page tables, load GDT/TSS/IDT, handle the few scenarios that need CPL0
// (decided by a byte-wise scan of the command line), then iretq to CPL3
// with IOPL=3. Everything else is Rust at CPL3.
//
// Entry points:
//   pvh_entry32    PVH (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode,
//                  paging off, ebx = hvm_start_info.
//   linux64_entry  Linux 64-bit boot protocol (ELF e_entry): long mode with
//                  the VMM's identity map, rsi = boot_params (zero page).
//   ap_trampoline  16-bit SIPI target, copied below 1 MiB by the smp scenario.

.set BOOT_KIND_PVH, 1
.set BOOT_KIND_LINUX64, 2
.set BOOT_KIND_AP, 3

.set SEL_KCODE64, 0x08
.set SEL_KDATA, 0x10
.set SEL_KCODE32, 0x18
.set SEL_UDATA, 0x23
.set SEL_UCODE64, 0x2b
.set SEL_TSS0, 0x30
.set MAX_CPUS, 64

.set EXC_STACK_SIZE, 0x4000
.set BSP_STACK_SIZE, 0x10000
.set AP_STACK_SIZE, 0x2000
.set HIGH_PDS, 64

.set COM1, 0x3f8
.set EXIT_PORT, 0xf4
.set EXIT_EXCEPTION, 2
.set EXIT_NOT_STOPPED, 4
// Leaves in TERN_CPUID (defined before use: Intel syntax would read a
// forward-referenced symbol as a memory operand).
.set CPUID_LEAVES, 12

// --------------------------------------------------------------------------
// PVH note: type 18 (XEN_ELFNOTE_PHYS32_ENTRY), name "Xen", 32-bit entry.
.section .note.Xen, "a", @note
.balign 4
.long 4
.long 4
.long 18
.asciz "Xen"
.balign 4
.long pvh_entry32
.balign 4

// --------------------------------------------------------------------------
.section .text.entry, "ax"
.code32
.global pvh_entry32
pvh_entry32:
    cli
    cld
    rdtsc
    mov [TERN_ENTRY_TSC], eax
    mov [TERN_ENTRY_TSC + 4], edx
    mov edi, ebx
    mov esi, BOOT_KIND_PVH
    jmp common32

// Reached from the AP trampoline through a far jump with CS = SEL_KCODE32.
.global ap_entry32
ap_entry32:
    mov ax, SEL_KDATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor edi, edi
    mov esi, BOOT_KIND_AP
    // fall through

// 32-bit protected mode, paging off -> long mode. Keeps edi/esi.
common32:
    lgdt [gdt_ptr]
    mov eax, cr4
    and eax, 0xffcfffff          // no SMEP/SMAP: CPL0 handlers live in user pages
    or eax, 0x620                // PAE | OSFXSR | OSXMMEXCPT
    mov cr4, eax
    lea eax, [pml4]
    mov cr3, eax
    mov ecx, 0xc0000080          // EFER
    rdmsr
    or eax, 0x100                // LME
    wrmsr
    mov eax, cr0
    and eax, 0x9ffffff3          // clear CD, NW, TS, EM
    or eax, 0x80000023           // PG | NE | MP | PE
    mov cr0, eax
    // ljmp SEL_KCODE64:start64
    .byte 0xea
    .long start64
    .word SEL_KCODE64

.code64
.global linux64_entry
linux64_entry:
    cli
    cld
    mov rdi, rsi
    rdtsc
    mov [rip + TERN_ENTRY_TSC], eax
    mov [rip + TERN_ENTRY_TSC + 4], edx
    mov esi, BOOT_KIND_LINUX64
    lgdt [rip + gdt_ptr]
    mov rax, cr4
    and eax, 0xffcfffff
    or eax, 0x620
    mov cr4, rax
    lea rax, [rip + pml4]
    mov cr3, rax
    mov rax, cr0
    and eax, 0x9ffffff3
    or eax, 0x80000023
    mov cr0, rax
    push SEL_KCODE64
    lea rax, [rip + start64]
    push rax
    .byte 0x48, 0xcb             // retfq: reload CS from our GDT

start64:
    mov ax, SEL_KDATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    cmp esi, BOOT_KIND_AP
    je ap64

    // ---- boot CPU ----
    mov r12, rdi                 // boot info (start_info or zero page)
    mov r13, rsi                 // boot kind
    lea rsp, [rip + exc_stack_top]
    xor ecx, ecx
    call load_tss
    call load_idt
    call capture_cpuid
    call cpl0_scenarios
    lea rax, [rip + bsp_stack_top]
    lea rcx, [rip + tern_bsp_main]
    mov rdi, r12
    mov rsi, r13
    jmp drop_to_cpl3

    // ---- application processor ----
ap64:
    mov eax, 1
    lock xadd dword ptr [rip + ap_next_index], eax
    cmp eax, MAX_CPUS
    jae halt_forever
    mov r12d, eax
    lea rsp, [rip + ap_stacks]
    mov ecx, eax
    inc ecx
    imul ecx, ecx, AP_STACK_SIZE
    add rsp, rcx
    mov ecx, r12d
    call load_tss
    call load_idt
    mov rax, rsp
    lea rcx, [rip + tern_ap_main]
    mov edi, r12d
    xor esi, esi
    // fall through

// rax = user stack top, rcx = user entry; rdi/rsi are its arguments.
drop_to_cpl3:
    sub rax, 8                   // as if called: rsp = 8 mod 16 at entry
    push SEL_UDATA
    push rax
    push 0x3002                  // IOPL=3, IF=0
    push SEL_UCODE64
    push rcx
    iretq

// ecx = cpu index: write TSS descriptor `index` (all share one TSS: only its
// RSP0 matters and exceptions are fatal) and load TR with it.
load_tss:
    lea rdx, [rip + gdt_tss]
    shl ecx, 4
    add rdx, rcx
    lea rax, [rip + tss]
    mov word ptr [rdx], 104 + 8192
    mov word ptr [rdx + 2], ax
    shr rax, 16
    mov byte ptr [rdx + 4], al
    mov byte ptr [rdx + 5], 0x89
    mov byte ptr [rdx + 6], 0
    mov byte ptr [rdx + 7], ah
    shr rax, 16
    mov dword ptr [rdx + 8], eax
    mov dword ptr [rdx + 12], 0
    add ecx, SEL_TSS0
    ltr cx
    ret

// The IDT is built at assembly time (below the stubs): nothing to fill.
load_idt:
    lidt [rip + idt_ptr]
    ret

// CPUID at CPL3 is not intercepted on every host (PVM runs it natively and
// shows the host's CPU), so the boot CPU records the leaves the scenarios
// need here, at CPL0, where the VMM's CPUID model applies. Table entries:
// leaf, subleaf, eax, ebx, ecx, edx (6 x u32).
capture_cpuid:
    push rbx
    lea rsi, [rip + TERN_CPUID]
    mov r8d, CPUID_LEAVES
.Lcpuid_loop:
    mov eax, [rsi]
    mov ecx, [rsi + 4]
    cpuid
    mov [rsi + 8], eax
    mov [rsi + 12], ebx
    mov [rsi + 16], ecx
    mov [rsi + 20], edx
    add rsi, 24
    dec r8d
    jnz .Lcpuid_loop
    pop rbx
    ret

// ---- scenarios that need CPL0 ----
// r12 = boot info, r13 = kind. Returns if the scenario is not one of these.
cpl0_scenarios:
    xor esi, esi
    test r12, r12
    jz .Lcs_none
    cmp r13d, BOOT_KIND_PVH
    jne .Lcs_linux
    cmp dword ptr [r12], 0x336ec578
    jne .Lcs_none
    mov rsi, [r12 + 24]
    jmp .Lcs_have
.Lcs_linux:
    mov esi, dword ptr [r12 + 0x228]
.Lcs_have:
    test rsi, rsi
    jz .Lcs_none
    lea rdi, [rip + str_test_key]
    call find_str
    test rsi, rsi
    jz .Lcs_none
    mov rbx, rsi
    lea rdi, [rip + str_hlt]
    call word_is
    jz scenario_hlt
    mov rsi, rbx
    lea rdi, [rip + str_triple]
    call word_is
    jz scenario_triple_fault
    mov rsi, rbx
    lea rdi, [rip + str_internal]
    call word_is
    jz scenario_internal_error
.Lcs_none:
    ret

scenario_hlt:
    lea rsi, [rip + msg_hlt]
    call puts
.Lhlt_again:
    cli
    hlt
    jmp .Lhlt_again

scenario_triple_fault:
    lea rsi, [rip + msg_triple]
    call puts
    lidt [rip + null_idt_ptr]
    movabs rax, 0x400000000000   // PML4 slot 128: not present -> #PF -> #DF -> shutdown
    mov rax, [rax]
    jmp not_stopped

scenario_internal_error:
    lea rsi, [rip + msg_internal]
    call puts
    // POPCNT with an MMIO (unbacked) operand: KVM must emulate the access
    // and its emulator has no POPCNT, so KVM_RUN returns
    // KVM_EXIT_INTERNAL_ERROR even on hardware virtualization.
    mov eax, 0xd003f000
    popcnt rax, qword ptr [rax]
    jmp not_stopped

not_stopped:
    lea rsi, [rip + msg_not_stopped]
    call puts
    mov dx, EXIT_PORT
    mov eax, EXIT_NOT_STOPPED
    out dx, eax
    jmp halt_forever

// rsi = haystack, rdi = NUL-terminated needle. rsi = just past the first
// match (4 KiB scan bound), or 0.
find_str:
    mov r8d, 4096
.Lfs_scan:
    xor ecx, ecx
.Lfs_cmp:
    mov al, [rdi + rcx]
    test al, al
    jz .Lfs_found
    cmp al, [rsi + rcx]
    jne .Lfs_next
    inc rcx
    jmp .Lfs_cmp
.Lfs_next:
    cmp byte ptr [rsi], 0
    je .Lfs_none
    inc rsi
    dec r8d
    jnz .Lfs_scan
.Lfs_none:
    xor esi, esi
    ret
.Lfs_found:
    add rsi, rcx
    ret

// ZF=1 if the word at rsi equals the NUL-terminated rdi and ends there
// (NUL or space follows).
word_is:
    mov al, [rdi]
    test al, al
    jz .Lwi_end
    cmp al, [rsi]
    jne .Lwi_ret
    inc rsi
    inc rdi
    jmp word_is
.Lwi_end:
    mov al, [rsi]
    test al, al
    jz .Lwi_ret
    cmp al, 0x20
.Lwi_ret:
    ret

// ---- serial output at CPL0 (exception reports only) ----
// al = byte. Bounded wait for THRE so a missing UART cannot hang us.
putc:
    push rcx
    push rdx
    push rax
    mov ecx, 100000
    mov dx, COM1 + 5
.Lputc_wait:
    in al, dx
    test al, 0x20
    jnz .Lputc_ready
    dec ecx
    jnz .Lputc_wait
.Lputc_ready:
    pop rax
    mov dx, COM1
    out dx, al
    pop rdx
    pop rcx
    ret

// rsi = NUL-terminated string
puts:
    mov al, [rsi]
    test al, al
    jz .Lputs_done
    call putc
    inc rsi
    jmp puts
.Lputs_done:
    ret

// rax = value, printed as 0x%016x
puthex:
    push rbx
    mov rbx, rax
    mov al, '0'
    call putc
    mov al, 'x'
    call putc
    mov ecx, 16
.Lph_loop:
    rol rbx, 4
    mov eax, ebx
    and eax, 15
    cmp eax, 10
    jb .Lph_digit
    add eax, 'a' - 10 - '0'
.Lph_digit:
    add eax, '0'
    push rcx
    call putc
    pop rcx
    dec ecx
    jnz .Lph_loop
    pop rbx
    ret

// ---- exceptions ----
.macro EXC_STUB n
exc_stub_\n:
.if (\n == 8) || ((\n >= 10) && (\n <= 14)) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
.else
    push 0
.endif
    push \n
    jmp exc_common
.endm

EXC_STUB 0
EXC_STUB 1
EXC_STUB 2
EXC_STUB 3
EXC_STUB 4
EXC_STUB 5
EXC_STUB 6
EXC_STUB 7
EXC_STUB 8
EXC_STUB 9
EXC_STUB 10
EXC_STUB 11
EXC_STUB 12
EXC_STUB 13
EXC_STUB 14
EXC_STUB 15
EXC_STUB 16
EXC_STUB 17
EXC_STUB 18
EXC_STUB 19
EXC_STUB 20
EXC_STUB 21
EXC_STUB 22
EXC_STUB 23
EXC_STUB 24
EXC_STUB 25
EXC_STUB 26
EXC_STUB 27
EXC_STUB 28
EXC_STUB 29
EXC_STUB 30
EXC_STUB 31

// Interrupt gates for vectors 0..31, complete at assembly time: the image
// starts at 1 MiB (link.ld asserts it), so a stub's offset bits 31:16 are
// 0x0010 and bits 15:0 are its distance from the image start, a constant
// within this section. Saves ~400 emulated instructions at boot.
.macro IDT_GATE n
    .word exc_stub_\n - pvh_entry32
    .word SEL_KCODE64
    .word 0x8e00                 // present, DPL0, 64-bit interrupt gate
    .word 0x0010
    .long 0
    .long 0
.endm
.balign 16
.global idt
idt:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    IDT_GATE \n
.endr
.global idt_end
idt_end:

// Stack: vector, error code, rip, cs, rflags, rsp, ss.
// Prints "TERN exception vector=.. error=.. rip=.. cr2=.. cs=.." and
// "TERN test=<name> result=fail reason=exception", exits with EXIT_EXCEPTION.
exc_common:
    lea rsi, [rip + msg_exc]
    call puts
    mov rax, [rsp]
    call puthex
    lea rsi, [rip + msg_err]
    call puts
    mov rax, [rsp + 8]
    call puthex
    lea rsi, [rip + msg_rip]
    call puts
    mov rax, [rsp + 16]
    call puthex
    lea rsi, [rip + msg_cr2]
    call puts
    mov rax, cr2
    call puthex
    lea rsi, [rip + msg_cs]
    call puts
    mov rax, [rsp + 24]
    call puthex
    lea rsi, [rip + msg_rflags]
    call puts
    mov rax, [rsp + 32]
    call puthex
    lea rsi, [rip + msg_test]
    call puts
    lea rsi, [rip + TERN_TEST_NAME]
    cmp byte ptr [rsi], 0
    jne .Lexc_named
    lea rsi, [rip + str_boot]
.Lexc_named:
    call puts
    lea rsi, [rip + msg_fail]
    call puts
    mov dx, EXIT_PORT
    mov eax, EXIT_EXCEPTION
    out dx, eax
halt_forever:
    cli
    hlt
    jmp halt_forever

// --------------------------------------------------------------------------
// The AP trampoline: copied to TRAMPOLINE_ADDR (page-aligned, below 1 MiB)
// and entered by SIPI in real mode with CS = TRAMPOLINE_ADDR >> 4, IP = 0.
.section .text.trampoline, "ax"
.code16
.global ap_trampoline_start
.global ap_trampoline_end
ap_trampoline_start:
    cli
    cld
    mov ax, cs
    mov ds, ax
    // lgdt [ap_trampoline_gdt_ptr - ap_trampoline_start] (disp16 form)
    .byte 0x0f, 0x01, 0x16
    .word ap_trampoline_gdt_ptr - ap_trampoline_start
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    // ljmpl SEL_KCODE32:ap_entry32 (absolute, into the image at 1 MiB)
    .byte 0x66, 0xea
    .long ap_entry32
    .word SEL_KCODE32
.balign 4
ap_trampoline_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:

.code64

// --------------------------------------------------------------------------
.section .rodata.entry, "a"
str_test_key: .asciz "tern.test="
str_hlt: .asciz "hlt"
str_triple: .asciz "triple-fault"
str_internal: .asciz "internal-error"
str_boot: .asciz "boot"
msg_hlt: .asciz "TERN test=hlt state=halted\n"
msg_triple: .asciz "TERN test=triple-fault state=faulting\n"
msg_internal: .asciz "TERN test=internal-error state=executing\n"
msg_not_stopped: .asciz "TERN result=fail reason=still-running\n"
msg_exc: .asciz "TERN exception vector="
msg_err: .asciz " error="
msg_rip: .asciz " rip="
msg_cr2: .asciz " cr2="
msg_cs: .asciz " cs="
msg_rflags: .asciz " rflags="
msg_test: .asciz "\nTERN test="
msg_fail: .asciz " result=fail reason=exception\n"


// --------------------------------------------------------------------------
// Page tables: identity map of 0..4 GiB with 2 MiB pages, all user-accessible
// (U/S) and writable; 3..4 GiB (the MMIO hole) uncached.
.section .data.pagetables, "aw"
.balign 4096
.global pml4
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
.global pdpt
pdpt:
    .quad pd + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x7
    .fill 508, 8, 0
pd:
.set pde_index, 0
.rept 1536
    .quad (pde_index << 21) | 0x87
    .set pde_index, pde_index + 1
.endr
.rept 512
    .quad (pde_index << 21) | 0x9f
    .set pde_index, pde_index + 1
.endr

.section .data.entry, "aw"
.balign 16
.global gdt
gdt:
    .quad 0
    .quad 0x00af9a000000ffff     // 0x08 kernel code 64
    .quad 0x00cf92000000ffff     // 0x10 kernel data
    .quad 0x00cf9a000000ffff     // 0x18 kernel code 32 (AP trampoline)
    .quad 0x00cff2000000ffff     // 0x20 user data (0x23)
    .quad 0x00affa000000ffff     // 0x28 user code 64 (0x2b)
gdt_tss:
    .fill MAX_CPUS * 2, 8, 0     // 0x30 + 16 * cpu: TSS descriptors
gdt_end:

.balign 8
    .word 0, 0, 0
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

.balign 8
    .word 0, 0, 0
idt_ptr:
    .word 32 * 16 - 1
    .quad idt

.balign 8
    .word 0, 0, 0
null_idt_ptr:
    .word 0
    .quad 0


.balign 16
tss:
    .long 0
    .quad exc_stack_top          // RSP0
    .fill 88, 1, 0
    .word 0
    .word 104                    // I/O permission bitmap right after the TSS
    .fill 8192, 1, 0             // every port allowed at CPL3
    .byte 0xff

.global TERN_ENTRY_TSC
.balign 8
TERN_ENTRY_TSC:                  // TSC at the boot CPU's first instruction
    .quad 0

.global ap_next_index
.balign 4
ap_next_index:
    .long 1

.global TERN_CPUID
.balign 8
TERN_CPUID:
.irp leaf, 0, 1, 6, 7, 0xd, 0x40000000, 0x40000001, 0x80000000, 0x80000001, 0x80000002, 0x80000003, 0x80000004
    .long \leaf, 0, 0, 0, 0, 0
.endr

// --------------------------------------------------------------------------
.section .stack, "aw", @nobits
.balign 4096
exc_stack:
    .skip EXC_STACK_SIZE
exc_stack_top:
.global bsp_stack_top
bsp_stack:
    .skip BSP_STACK_SIZE
bsp_stack_top:
.global ap_stacks
ap_stacks:
    .skip AP_STACK_SIZE * MAX_CPUS
.global ap_stacks_end
ap_stacks_end:
// Page directories the memory scenario adds at CPL3 for RAM above 4 GiB
// when the CPU has no 1 GiB pages: one per GiB, 64 GiB more.
.balign 4096
.global high_pds
high_pds:
    .skip 4096 * HIGH_PDS
