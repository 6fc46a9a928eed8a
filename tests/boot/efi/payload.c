/* A tiny EFI program standing in for a slot's kernel in the systemd-boot rig.
 *
 * It prints which slot it is (SLOT is set per binary at build time) and the
 * LoaderEntrySelected variable systemd-boot set for this boot, then powers
 * the machine off, so each QEMU run is exactly one boot. */
#include <efi.h>
#include <efilib.h>

#ifndef SLOT
#error "build with -DSLOT=L'A' or -DSLOT=L'B'"
#endif

static EFI_GUID loader_guid = { 0x4a67b082, 0x0a4c, 0x41cf,
                                { 0xb6, 0xc7, 0x44, 0x0b, 0x29, 0xbb, 0x8c, 0x4f } };

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab) {
        CHAR16 entry[256];
        UINTN size = sizeof(entry) - sizeof(CHAR16);
        UINT32 attrs = 0;
        EFI_STATUS err;

        InitializeLib(image, systab);
        err = uefi_call_wrapper(RT->GetVariable, 5, L"LoaderEntrySelected", &loader_guid,
                                &attrs, &size, entry);
        if (EFI_ERROR(err))
                size = 0;
        entry[size / sizeof(CHAR16)] = 0;
        Print(L"\r\nKRUXOS-BOOT slot=%c entry=%s\r\n", SLOT, size ? entry : L"-");
        uefi_call_wrapper(RT->ResetSystem, 4, EfiResetShutdown, EFI_SUCCESS, 0, NULL);
        return EFI_SUCCESS;
}
