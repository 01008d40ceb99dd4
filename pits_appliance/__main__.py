from pits_appliance.cli import main

main()
