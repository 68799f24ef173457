import CFuzzDriver
import Foundation

exit(CFuzzDriver_run(CommandLine.argc, CommandLine.unsafeArgv))
