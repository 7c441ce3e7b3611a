from unionfs.cli import console

console()
