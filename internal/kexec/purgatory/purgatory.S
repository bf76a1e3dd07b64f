/*
 * khib purgatory: the first code that runs in the helper kernel's memory
 * after the running kernel A kexec-jumps (KEXEC_PRESERVE_CONTEXT).
 *
 * Entered by relocate_kernel (arch/x86/kernel/relocate_kernel_64.S,
 * identity_mapped: "call *%rdx") in 64-bit long mode with identity-mapped
 * page tables and interrupts off. Because that was a *call*, 0(%rsp) holds
 * A's jump-back entry: code in A's control page that re-enters A when the
 * helper later kexec-jumps to it. Registers are not cleared on this path,
 * so nothing but %rsp may be trusted.
 *
 * It does three things, then enters the helper kernel through the 64-bit
 * boot protocol (Documentation/arch/x86/boot.rst):
 *  1. writes the jump-back entry as 16 hex digits into a placeholder in the
 *     helper's command line, where the helper's userspace reads it from
 *     /proc/cmdline (the kernel copies the command line before it can be
 *     overwritten, so it must be written here, first);
 *  2. copies up to four memory ranges (A's low memory into a backup area
 *     in R, before the helper kernel claims it as RAM);
 *  3. loads a GDT with __BOOT_CS (0x10) and __BOOT_DS (0x18), sets %rsi to
 *     boot_params and jumps to the kernel's 64-bit entry.
 *
 * The code is position independent. The loader patches the parameter block
 * (found by its magic) before loading the blob as a kexec segment.
 * Rebuild purgatory.bin with `go generate ./internal/kexec` after editing.
 */
	.text
	.code64
	.globl	_start
_start:
	jmp	code

	.balign	8
params:
	.ascii	"KHIBPURG"		/* +0x00 magic, located by the loader */
p_entry:	.quad 0			/* +0x08 kernel 64-bit entry (phys) */
p_bootparams:	.quad 0			/* +0x10 boot_params (phys) */
p_hexdst:	.quad 0			/* +0x18 16 hex digits in the cmdline, or 0 */
p_jumpback:	.quad 0			/* +0x20 written here: A's jump-back entry */
p_copies:	.fill	4 * 3, 8, 0	/* +0x28 {src, dst, len} x 4, len 0 ends */

	.balign	8
gdt:
	.quad	0			/* 0x00 null */
	.quad	0			/* 0x08 unused */
	.quad	0x00af9a000000ffff	/* 0x10 __BOOT_CS: 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x18 __BOOT_DS: data */
gdt_end:
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	0			/* base, filled in at run time */

code:
	cld
	movq	(%rsp), %rax		/* A's jump-back entry */
	leaq	params(%rip), %rbx
	movq	%rax, p_jumpback - params(%rbx)

	/* 1. hex digits, most significant first */
	movq	p_hexdst - params(%rbx), %rdi
	testq	%rdi, %rdi
	jz	2f
	movq	%rax, %rdx
	movl	$16, %ecx
1:	rolq	$4, %rdx
	movl	%edx, %eax
	andl	$0xf, %eax
	cmpl	$10, %eax
	jb	3f
	addl	$('a' - '0' - 10), %eax
3:	addl	$'0', %eax
	movb	%al, (%rdi)
	incq	%rdi
	decl	%ecx
	jnz	1b
2:
	/* 2. memory copies */
	leaq	p_copies - params(%rbx), %r8
	movl	$4, %r9d
4:	movq	16(%r8), %rcx
	testq	%rcx, %rcx
	jz	5f
	movq	0(%r8), %rsi
	movq	8(%r8), %rdi
	rep movsb
	addq	$24, %r8
	decl	%r9d
	jnz	4b
5:
	/* 3. GDT, segments, and into the kernel */
	leaq	gdt(%rip), %rax
	movq	%rax, gdt_desc + 2(%rip)
	lgdt	gdt_desc(%rip)
	movl	$0x18, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	leaq	6f(%rip), %rax
	pushq	$0x10
	pushq	%rax
	lretq
6:
	movq	p_bootparams - params(%rbx), %rsi
	movq	p_entry - params(%rbx), %rax
	xorl	%ebp, %ebp
	xorl	%edi, %edi
	xorl	%ebx, %ebx
	jmp	*%rax
